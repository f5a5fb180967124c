"""Shared builders for parity tests: tiny random transformers Qwen2.5-VL models and inputs."""

from __future__ import annotations

import numpy as np
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
IMAGE, VIDEO, VSTART, VEND = 252, 253, 250, 251


def tiny_hf_config(tied: bool = False, layers: int = 2) -> Qwen2_5_VLConfig:
  return Qwen2_5_VLConfig(
      text_config=dict(vocab_size=256, hidden_size=64, intermediate_size=128,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       rms_norm_eps=1e-6, max_position_embeddings=4096,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                        "mrope_section": [2, 3, 3]}),
      vision_config=dict(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                         out_hidden_size=64, patch_size=14, temporal_patch_size=2,
                         spatial_merge_size=2, window_size=112, fullatt_block_indexes=[1],
                         tokens_per_second=2, hidden_act="silu", in_channels=3),
      image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART,
      vision_end_token_id=VEND, tie_word_embeddings=tied, eos_token_id=1, pad_token_id=0,
      bos_token_id=0)


def build_hf_model(cfg: Qwen2_5_VLConfig, seed: int = 0, dtype=torch.float32):
  """A random model whose every weight (biases and norms too) is non-trivial."""
  torch.manual_seed(seed)
  model = Qwen2_5_VLForConditionalGeneration._from_config(cfg, attn_implementation="eager")
  with torch.no_grad():
    for name, p in model.named_parameters():
      is_norm = "norm" in name or "ln_q" in name
      p.copy_(torch.randn_like(p) * 0.1 + (1.0 if is_norm else 0.0))
  return model.to(dtype).eval()


def patchify(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Normalised frames (F, C, H, W), F even -> pixel_values (N, 1176), grid (1, 3). Spec §2.4."""
  f, c, h, w = frames.shape
  gt, gh, gw = f // 2, h // 14, w // 14
  x = frames.reshape(gt, 2, c, gh // 2, 2, 14, gw // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  return x.reshape(gt * gh * gw, c * 2 * 14 * 14), np.array([[gt, gh, gw]])


def random_video(rng: np.random.RandomState, frames: int, h: int, w: int):
  raw = rng.randint(0, 256, (frames, h, w, 3)).astype(np.float32) / 255
  return patchify(((raw - MEAN) / STD).transpose(0, 3, 1, 2))


def random_image(rng: np.random.RandomState, h: int, w: int):
  raw = rng.randint(0, 256, (1, h, w, 3)).astype(np.float32) / 255
  x = ((raw - MEAN) / STD).transpose(0, 3, 1, 2)
  return patchify(np.repeat(x, 2, axis=0))


def span(token: int, grid: np.ndarray) -> list[int]:
  return [VSTART] + [token] * (int(np.prod(grid)) // 4) + [VEND]


def left_pad(rows: list[list[int]], pad: int = 0) -> tuple[np.ndarray, np.ndarray]:
  length = max(map(len, rows))
  ids = np.array([[pad] * (length - len(r)) + r for r in rows], np.int64)
  mask = np.array([[0] * (length - len(r)) + [1] * len(r) for r in rows], np.int64)
  return ids, mask


def hf_inputs(batch: dict) -> dict:
  """Our batch dict -> transformers kwargs (adds mm_token_type_ids, which 5.x needs)."""
  ids = np.asarray(batch["input_ids"])
  out = {"input_ids": torch.tensor(ids),
         "mm_token_type_ids": torch.tensor(np.where(ids == IMAGE, 1, np.where(ids == VIDEO, 2, 0)))}
  for k, v in batch.items():
    if k != "input_ids" and v is not None:
      out[k] = torch.tensor(np.asarray(v))
  return out


def hf_logits(model, batch: dict) -> np.ndarray:
  with torch.no_grad():
    return model(**hf_inputs(batch)).logits.float().numpy()


class _Meta:
  def __init__(self, fps):
    self.sampled_fps = fps


class GridOnlyVideoProcessor:
  """Stands in for the HF video processor (it needs torchvision): returns a given grid."""
  merge_size, temporal_patch_size = 2, 2

  def __init__(self, grid, fps):
    self.grid, self.fps = grid, fps

  def __call__(self, videos=None, **kwargs):
    n = int(np.prod(self.grid))
    return {"pixel_values_videos": np.zeros((n, 1176), np.float32),
            "video_grid_thw": np.array([self.grid]), "video_metadata": [_Meta(self.fps)]}


class StubVideoProcessor(Qwen2_5_VLProcessor):
  """The transformers processor with the stand-in video processor accepted."""

  def check_argument_for_proper_class(self, name, arg):
    if name != "video_processor":
      return super().check_argument_for_proper_class(name, arg)
