"""Qwen2.5-VL configuration: presets for the released sizes and a reader for HF `config.json`.

The HF config classes carry defaults that are not the released values (vision hidden 3584,
tokens_per_second 4), so everything here is read from the file or from the presets below,
which copy the released checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class VisionConfig:
  depth: int = 32
  hidden_size: int = 1280
  intermediate_size: int = 3420
  num_heads: int = 16
  out_hidden_size: int = 3584
  patch_size: int = 14
  temporal_patch_size: int = 2
  spatial_merge_size: int = 2
  window_size: int = 112
  fullatt_block_indexes: tuple[int, ...] = (7, 15, 23, 31)
  tokens_per_second: float = 2
  in_channels: int = 3
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def patch_dim(self) -> int:
    return self.in_channels * self.temporal_patch_size * self.patch_size**2

  @property
  def window_patches(self) -> int:
    """Patches in one attention window (8x8 = 64 for the released models)."""
    return (self.window_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_hidden_layers: int = 28
  num_attention_heads: int = 28
  num_key_value_heads: int = 4
  head_dim: int = 128
  rms_norm_eps: float = 1e-6
  rope_theta: float = 1e6
  mrope_section: tuple[int, int, int] = (16, 24, 24)
  max_position_embeddings: int = 128000


@dataclasses.dataclass(frozen=True)
class Qwen25VLConfig:
  text: TextConfig = TextConfig()
  vision: VisionConfig = VisionConfig()
  tie_word_embeddings: bool = False
  image_token_id: int = 151655
  video_token_id: int = 151656
  vision_start_token_id: int = 151652
  vision_end_token_id: int = 151653
  vision_token_id: int = 151654
  bos_token_id: int = 151643
  eos_token_id: int = 151645
  pad_token_id: int = 151643

  def __post_init__(self):
    t, v = self.text, self.vision
    if 2 * sum(t.mrope_section) != t.head_dim:
      raise ValueError(f"mrope_section {t.mrope_section} must sum to head_dim/2 = {t.head_dim // 2}")
    if t.num_attention_heads % t.num_key_value_heads:
      raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if v.out_hidden_size != t.hidden_size:
      raise ValueError(f"vision out_hidden_size {v.out_hidden_size} != text hidden_size {t.hidden_size}")

  def replace(self, **kw) -> "Qwen25VLConfig":
    return dataclasses.replace(self, **kw)

  # ----------------------------------------------------------------------------------------------
  # Hugging Face config.json <-> this config.

  def to_hf_dict(self) -> dict[str, Any]:
    """A config.json transformers (4.x and 5.x) reads back into the same model."""
    t, v = self.text, self.vision
    rope = {"type": "mrope", "rope_type": "default", "mrope_section": list(t.mrope_section)}
    text = dict(
        model_type="qwen2_5_vl_text", vocab_size=t.vocab_size, hidden_size=t.hidden_size,
        intermediate_size=t.intermediate_size, num_hidden_layers=t.num_hidden_layers,
        num_attention_heads=t.num_attention_heads, num_key_value_heads=t.num_key_value_heads,
        head_dim=t.head_dim, rms_norm_eps=t.rms_norm_eps, rope_theta=t.rope_theta,
        max_position_embeddings=t.max_position_embeddings, hidden_act="silu",
        rope_scaling=rope, rope_parameters={**rope, "rope_theta": t.rope_theta},
        tie_word_embeddings=self.tie_word_embeddings, use_sliding_window=False,
        sliding_window=32768, max_window_layers=t.num_hidden_layers, attention_dropout=0.0,
        bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id)
    vision = dict(
        model_type="qwen2_5_vl", depth=v.depth, hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size, num_heads=v.num_heads,
        out_hidden_size=v.out_hidden_size, patch_size=v.patch_size,
        spatial_patch_size=v.patch_size, temporal_patch_size=v.temporal_patch_size,
        spatial_merge_size=v.spatial_merge_size, window_size=v.window_size,
        fullatt_block_indexes=list(v.fullatt_block_indexes), tokens_per_second=v.tokens_per_second,
        in_chans=v.in_channels, in_channels=v.in_channels, hidden_act="silu")
    # The 4.x form keeps the text fields at the top level; 5.x reads `text_config`. Write both.
    top = {k: val for k, val in text.items() if k != "model_type"}
    return dict(
        architectures=["Qwen2_5_VLForConditionalGeneration"], model_type="qwen2_5_vl",
        **top, text_config=text, vision_config=vision,
        image_token_id=self.image_token_id, video_token_id=self.video_token_id,
        vision_start_token_id=self.vision_start_token_id,
        vision_end_token_id=self.vision_end_token_id, vision_token_id=self.vision_token_id,
        pad_token_id=self.pad_token_id, torch_dtype="bfloat16")


_MODEL_TYPES = ("qwen2_5_vl",)


def from_hf_config(path_or_dict: str | os.PathLike | dict) -> Qwen25VLConfig:
  """Reads a transformers 4.x or 5.x Qwen2.5-VL `config.json` (path to file/dir, or a dict)."""
  source = "<dict>"
  if isinstance(path_or_dict, dict):
    raw = path_or_dict
  else:
    source = os.fspath(path_or_dict)
    if os.path.isdir(source):
      source = os.path.join(source, "config.json")
    if not os.path.exists(source):
      raise FileNotFoundError(f"{source}: no config.json found")
    try:
      with open(source) as f:
        raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{source}: invalid JSON at line {e.lineno}: {e.msg}") from e
  if raw.get("model_type") not in _MODEL_TYPES:
    raise ValueError(f"{source}: unsupported model_type {raw.get('model_type')!r}; "
                     f"expected one of {_MODEL_TYPES}")
  # 5.x nests the text fields in text_config; 4.x keeps them at top level. Prefer the nested ones.
  text_raw = {**{k: v for k, v in raw.items() if k not in ("text_config", "vision_config")},
              **raw.get("text_config", {})}
  vis_raw = raw.get("vision_config")
  if vis_raw is None:
    raise ValueError(f"{source}: missing field 'vision_config'")

  def need(d: dict, key: str, where: str):
    if key not in d:
      raise ValueError(f"{source}: missing field '{where}{key}'")
    return d[key]

  rope = text_raw.get("rope_parameters") or text_raw.get("rope_scaling") or {}
  if "mrope_section" not in rope:
    raise ValueError(f"{source}: missing field 'rope_scaling.mrope_section' (or rope_parameters)")
  rope_theta = rope.get("rope_theta", text_raw.get("rope_theta", 1e6))
  heads = need(text_raw, "num_attention_heads", "text_config.")
  hidden = need(text_raw, "hidden_size", "text_config.")
  text = TextConfig(
      vocab_size=need(text_raw, "vocab_size", "text_config."), hidden_size=hidden,
      intermediate_size=need(text_raw, "intermediate_size", "text_config."),
      num_hidden_layers=need(text_raw, "num_hidden_layers", "text_config."),
      num_attention_heads=heads,
      num_key_value_heads=text_raw.get("num_key_value_heads", heads),
      head_dim=text_raw.get("head_dim") or hidden // heads,
      rms_norm_eps=text_raw.get("rms_norm_eps", 1e-6), rope_theta=float(rope_theta),
      mrope_section=tuple(rope["mrope_section"]),
      max_position_embeddings=text_raw.get("max_position_embeddings", 128000))
  vision = VisionConfig(
      depth=need(vis_raw, "depth", "vision_config."),
      hidden_size=need(vis_raw, "hidden_size", "vision_config."),
      intermediate_size=need(vis_raw, "intermediate_size", "vision_config."),
      num_heads=need(vis_raw, "num_heads", "vision_config."),
      out_hidden_size=vis_raw.get("out_hidden_size", hidden),
      patch_size=vis_raw.get("patch_size", 14),
      temporal_patch_size=vis_raw.get("temporal_patch_size", 2),
      spatial_merge_size=vis_raw.get("spatial_merge_size", 2),
      window_size=vis_raw.get("window_size", 112),
      fullatt_block_indexes=tuple(vis_raw.get("fullatt_block_indexes", (7, 15, 23, 31))),
      tokens_per_second=vis_raw.get("tokens_per_second", 2),
      in_channels=vis_raw.get("in_channels", vis_raw.get("in_chans", 3)),
      rms_norm_eps=vis_raw.get("rms_norm_eps", 1e-6),
      rope_theta=float((vis_raw.get("rope_parameters") or {}).get("rope_theta", 10000.0)))
  tie = raw.get("tie_word_embeddings", text_raw.get("tie_word_embeddings", False))
  defaults = Qwen25VLConfig()
  ids = {k: raw.get(k, text_raw.get(k, getattr(defaults, k))) for k in (
      "image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
      "vision_token_id", "bos_token_id", "eos_token_id", "pad_token_id")}
  if isinstance(ids["eos_token_id"], list):
    ids["eos_token_id"] = ids["eos_token_id"][0]
  if ids["pad_token_id"] is None:
    ids["pad_token_id"] = ids["bos_token_id"]
  return Qwen25VLConfig(text=text, vision=vision, tie_word_embeddings=bool(tie), **ids)


def _preset(hidden, inter, layers, heads, kv, vocab, tied) -> Qwen25VLConfig:
  return Qwen25VLConfig(
      text=TextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, head_dim=128),
      vision=VisionConfig(out_hidden_size=hidden), tie_word_embeddings=tied)


PRESETS: dict[str, Qwen25VLConfig] = {
    # Tiny random model for tests (the porting spec's verification config).
    "tiny": Qwen25VLConfig(
        text=TextConfig(vocab_size=256, hidden_size=64, intermediate_size=128,
                        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=16, mrope_section=(2, 3, 3), max_position_embeddings=4096),
        vision=VisionConfig(depth=2, hidden_size=32, intermediate_size=48, num_heads=2,
                            out_hidden_size=64, fullatt_block_indexes=(1,)),
        image_token_id=252, video_token_id=253, vision_start_token_id=250,
        vision_end_token_id=251, vision_token_id=249, bos_token_id=0, eos_token_id=1,
        pad_token_id=0),
    "3b": _preset(2048, 11008, 36, 16, 2, 151936, True),
    "7b": _preset(3584, 18944, 28, 28, 4, 152064, False),
    "32b": _preset(5120, 27648, 64, 40, 8, 152064, False),
    "72b": _preset(8192, 29568, 80, 64, 8, 152064, False),
}


def get_preset(name: str) -> Qwen25VLConfig:
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS)}")
  return PRESETS[name]
