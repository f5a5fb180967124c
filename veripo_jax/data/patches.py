"""Normalized frames -> `pixel_values` rows in 2x2-merge-block order, plus `grid_thw`.

The ViT's patch embedding is a matmul over rows of C·T·P·P values and its merger fuses each group
of 4 consecutive rows into one LLM token, so the row order here is part of the model's contract
(porting spec §2.4).
"""

from __future__ import annotations

import numpy as np

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(frames: np.ndarray, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> np.ndarray:
  """uint8 (F, H, W, C) -> float32 (F, C, H, W) as (x/255 - mean) / std."""
  x = frames.astype(np.float32) * np.float32(1 / 255)
  x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
  return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def pad_frames(x: np.ndarray, multiple: int) -> np.ndarray:
  """Repeats the last frame until the frame count is a multiple (an image becomes T copies)."""
  short = -x.shape[0] % multiple
  return np.concatenate([x, np.repeat(x[-1:], short, axis=0)]) if short else x


def patchify(x: np.ndarray, patch_size: int, temporal_patch_size: int,
             merge_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(F, C, H, W) -> pixel_values (t·h·w, C·T·P·P) and grid_thw (3,) in patch units.

  H and W must be multiples of patch_size·merge_size (smart_resize guarantees it); F is padded.
  """
  x = pad_frames(x, temporal_patch_size)
  frames, channels, height, width = x.shape
  p, tp, m = patch_size, temporal_patch_size, merge_size
  if height % (p * m) or width % (p * m):
    raise ValueError(f"frame size {height}x{width} is not a multiple of {p * m}")
  gt, gh, gw = frames // tp, height // p, width // p
  x = x.reshape(gt, tp, channels, gh // m, m, p, gw // m, m, p)
  x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
  pixel_values = x.reshape(gt * gh * gw, channels * tp * p * p)
  return pixel_values, np.array([gt, gh, gw], np.int32)
