"""3-D M-RoPE position ids (temporal, height, width) for a batch of prompts, computed on the host.

Two rules exist for where text resumes after a vision span (porting spec §0.2, §4.3):
- ``legacy`` (default): the next text token starts at max(all previous positions) + 1. This is
  how the released checkpoints were trained and what vLLM does.
- ``hf5``: transformers 5.23 advances by max(h, w) // 2 after every span, ignoring the temporal
  extent of a video. Kept for parity tests against transformers.
The two agree for images and for short videos.
"""

from __future__ import annotations

import itertools

import numpy as np

ROPE_MODES = ("legacy", "hf5")
TEXT, IMAGE, VIDEO = 0, 1, 2


def mm_token_types(input_ids: np.ndarray, image_token_id: int, video_token_id: int) -> np.ndarray:
  """0 = text, 1 = image placeholder, 2 = video placeholder (the processor's mm_token_type_ids)."""
  ids = np.asarray(input_ids)
  return np.where(ids == image_token_id, IMAGE, np.where(ids == video_token_id, VIDEO, TEXT))


def get_rope_index(
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None = None,
    image_grid_thw: np.ndarray | None = None,
    video_grid_thw: np.ndarray | None = None,
    second_per_grid_ts: np.ndarray | None = None,
    *,
    image_token_id: int,
    video_token_id: int,
    spatial_merge_size: int = 2,
    tokens_per_second: float = 2,
    mode: str = "legacy",
) -> tuple[np.ndarray, np.ndarray]:
  """Returns ``position_ids (3, B, L)`` int32 and ``next_position (B,)``.

  ``next_position[b]`` is the position of the first generated token of row b: the largest of the
  three coordinates of the last prompt token, plus one (what HF ``generate`` continues with).
  Padded slots (attention_mask == 0) get position 0.
  """
  if mode not in ROPE_MODES:
    raise ValueError(f"unknown rope mode {mode!r}; choose from {ROPE_MODES}")
  ids = np.asarray(input_ids)
  batch, length = ids.shape
  mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
  types = mm_token_types(ids, image_token_id, video_token_id)
  grids = {IMAGE: _as_grid(image_grid_thw), VIDEO: _as_grid(video_grid_thw)}
  spg = (np.ones(len(grids[VIDEO]), np.float32) if second_per_grid_ts is None
         else np.asarray(second_per_grid_ts, np.float32).reshape(-1))
  cursor = {IMAGE: 0, VIDEO: 0}
  position_ids = np.zeros((3, batch, length), np.int32)
  next_position = np.zeros((batch,), np.int32)
  m = spatial_merge_size
  for b in range(batch):
    kept = np.nonzero(mask[b])[0]
    runs, cur = [], 0
    for kind, group in itertools.groupby(types[b, kept]):
      n = len(list(group))
      if kind == TEXT:
        pos = np.broadcast_to(cur + np.arange(n), (3, n))
        runs.append(pos)
        cur += n
        continue
      k = cursor[kind]
      if k >= len(grids[kind]):
        raise ValueError(f"row {b}: more {('', 'image', 'video')[kind]} spans than grids given")
      t, h, w = (int(x) for x in grids[kind][k])
      h2, w2 = h // m, w // m
      if n != t * h2 * w2:
        raise ValueError(f"row {b}: {n} placeholder tokens but grid {(t, h, w)} needs "
                         f"{t * h2 * w2}")
      interval = (np.float32(tokens_per_second) * spg[k]) if kind == VIDEO else np.float32(1)
      t_pos = (np.arange(t, dtype=np.float32) * interval).astype(np.int64)
      tt, hh, ww = np.meshgrid(t_pos, np.arange(h2), np.arange(w2), indexing="ij")
      pos = cur + np.stack([tt.ravel(), hh.ravel(), ww.ravel()])
      runs.append(pos)
      cursor[kind] = k + 1
      cur = cur + max(h, w) // m if mode == "hf5" else int(pos.max()) + 1
    if runs:
      row = np.concatenate(runs, axis=1)
      position_ids[:, b, kept] = row
      next_position[b] = int(row[:, -1].max()) + 1
  return position_ids, next_position


def text_positions(attention_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """What `get_rope_index` returns for prompts without vision (three equal rows), vectorised:
  the positions of a text-only model."""
  mask = np.asarray(attention_mask).astype(bool)
  pos = np.where(mask, np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return np.stack([pos] * 3), mask.sum(1).astype(np.int32)


def _as_grid(grid) -> np.ndarray:
  if grid is None:
    return np.zeros((0, 3), np.int64)
  return np.asarray(grid, np.int64).reshape(-1, 3)
