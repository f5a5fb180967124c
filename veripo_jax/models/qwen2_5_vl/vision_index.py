"""Host-side index tensors for the vision tower, computed from `grid_thw` with numpy.

The ViT attends within 8x8-patch windows (most blocks) or within one temporal slice (the
full-attention blocks). Instead of a dense N x N mask, tokens are gathered into padded segments
`(S, Lmax)`, attended per segment with a key mask, and gathered back. All sizes (patch count,
segment count, segment length) are rounded up to buckets so a few compilations serve all inputs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from flax import struct

from veripo_jax.buckets import bucket as size_bucket
from veripo_jax.models.qwen2_5_vl.config import VisionConfig


def bucket(n: int, minimum: int = 16) -> int:
  """Smallest m * 2^e >= n with m in {4, 5, 6, 7}: at most 25% padding, few distinct sizes."""
  n = max(int(n), minimum)
  e = max(int(np.floor(np.log2(n))) - 2, 0)
  for m in (4, 5, 6, 7, 8):
    if m * 2**e >= n:
      return m * 2**e
  raise AssertionError("unreachable")


@struct.dataclass
class Segments:
  """Padded segments: `gather (S, L)` token ids, `valid (S, L)`, `scatter (N,)` token slots."""
  gather: np.ndarray
  valid: np.ndarray
  scatter: np.ndarray


@struct.dataclass
class VisionInputs:
  """Everything the vision tower needs, as arrays (jit-friendly; shapes are bucketed)."""
  pixel_values: np.ndarray      # (N, C*T*P*P), processor order, zero rows past the real patches
  rotary_pos: np.ndarray        # (N, 2) (row, col) of each patch, in window order
  window_order: np.ndarray      # (N/4,) merged-token permutation into window order
  restore_order: np.ndarray     # (N/4,) inverse permutation
  window: Segments              # window attention segments (window order)
  full: Segments                # one segment per temporal slice (window order)


def window_index(grid_thw: np.ndarray, cfg: VisionConfig) -> tuple[np.ndarray, list[int]]:
  """Merged-token permutation into window order and the window lengths in patches (spec §3.3)."""
  m = cfg.spatial_merge_size
  ws = cfg.window_size // m // cfg.patch_size
  order, lengths, offset = [], [], 0
  for t, h, w in np.asarray(grid_thw, np.int64).reshape(-1, 3):
    h2, w2 = h // m, w // m
    index = np.arange(t * h2 * w2).reshape(t, h2, w2)
    pad_h, pad_w = ws - h2 % ws, ws - w2 % ws
    nh, nw = (h2 + pad_h) // ws, (w2 + pad_w) // ws
    padded = np.pad(index, ((0, 0), (0, pad_h), (0, pad_w)), constant_values=-1)
    windows = padded.reshape(t, nh, ws, nw, ws).transpose(0, 1, 3, 2, 4).reshape(-1, ws * ws)
    for win in windows:
      ids = win[win >= 0]
      if ids.size:
        order.append(ids + offset)
        lengths.append(int(ids.size) * m * m)
    offset += t * h2 * w2
  return np.concatenate(order).astype(np.int32), lengths


def patch_positions(grid_thw: np.ndarray, merge: int) -> np.ndarray:
  """(row, col) of every patch in processor (merge-block-major) order, (N, 2)."""
  out = []
  for t, h, w in np.asarray(grid_thw, np.int64).reshape(-1, 3):
    hpos, wpos = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = lambda a: a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).ravel()
    out.append(np.tile(np.stack([block(hpos), block(wpos)], -1), (t, 1)))
  return np.concatenate(out).astype(np.int32)


def _segments(lengths: list[int], num_tokens: int, seg_len: int, num_segments: int) -> Segments:
  gather = np.zeros((num_segments, seg_len), np.int32)
  valid = np.zeros((num_segments, seg_len), bool)
  scatter = np.zeros((num_tokens,), np.int32)
  start = 0
  for s, n in enumerate(lengths):
    ids = np.arange(start, start + n)
    gather[s, :n] = ids
    valid[s, :n] = True
    scatter[ids] = s * seg_len + np.arange(n)
    start += n
  return Segments(gather=gather, valid=valid, scatter=scatter)


def prepare_vision(pixel_values: np.ndarray, grid_thw: np.ndarray, cfg: VisionConfig,
                   *, bucketed: bool = True) -> VisionInputs:
  """Pads patches to a bucket and builds the permutation, positions and segment tables."""
  grid = np.asarray(grid_thw, np.int64).reshape(-1, 3)
  pixel_values = np.asarray(pixel_values)
  m2 = cfg.spatial_merge_size ** 2
  n_real = int(np.sum(grid.prod(-1)))
  if pixel_values.shape != (n_real, cfg.patch_dim):
    raise ValueError(f"pixel_values has shape {pixel_values.shape}; grid_thw {grid.tolist()} "
                     f"needs ({n_real}, {cfg.patch_dim})")
  size = bucket if bucketed else (lambda n, minimum=1: max(n, minimum))
  n_pad = size(n_real, 64 if bucketed else m2)
  n_pad += -n_pad % m2
  order, window_lengths = window_index(grid, cfg)
  merged_pad = n_pad // m2
  order = np.concatenate([order, np.arange(len(order), merged_pad, dtype=np.int32)])
  restore = np.argsort(order).astype(np.int32)
  pos = patch_positions(grid, cfg.spatial_merge_size)
  pos = pos.reshape(-1, m2, 2)[order[: n_real // m2]].reshape(-1, 2)
  slice_lengths = [int(h * w) for t, h, w in grid for _ in range(t)]
  window_len = cfg.window_patches
  full_len = size(max(slice_lengths), window_len)
  return VisionInputs(
      pixel_values=np.pad(pixel_values, ((0, n_pad - n_real), (0, 0))),
      rotary_pos=np.pad(pos, ((0, n_pad - n_real), (0, 0))),
      window_order=order,
      restore_order=restore,
      window=_segments(window_lengths, n_pad, window_len, size(len(window_lengths), 1)),
      full=_segments(slice_lengths, n_pad, full_len, size(len(slice_lengths), 1)),
  )


def _pow2(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def _pad_segments(seg: Segments, num_tokens: int, num_segments: int, length: int) -> Segments:
  """Segments padded to (num_segments, length) and num_tokens; slots re-addressed."""
  s, l = seg.gather.shape
  gather = np.zeros((num_segments, length), np.int32)
  valid = np.zeros((num_segments, length), bool)
  gather[:s, :l], valid[:s, :l] = seg.gather, seg.valid
  slot = np.asarray(seg.scatter, np.int64)
  scatter = np.zeros(num_tokens, np.int32)       # padding patches read slot 0, as before
  scatter[:len(slot)] = (slot // l) * length + slot % l
  return Segments(gather=gather, valid=valid, scatter=scatter)


def coarsen_vision(vision: VisionInputs, patch_buckets: Sequence[int], merge_size: int
                   ) -> VisionInputs:
  """Vision inputs padded to the loader's patch buckets and power-of-two segment tables.

  `prepare_vision` rounds to fine buckets (at most 25% padding), so almost every new mix of
  videos and images in a batch is a new shape and a new compilation of the whole train step.
  Here patches take the loader's few patch buckets, segment counts and the full-attention
  segment length powers of two; added patches are zero rows no segment reads, and their merged
  tokens land past the real features, so the real features are unchanged.
  """
  m2 = merge_size ** 2
  n = vision.pixel_values.shape[0]
  target = size_bucket(n, patch_buckets)
  target += -target % m2
  extra = np.arange(n // m2, target // m2, dtype=np.int32)
  rows = ((0, target - n), (0, 0))
  window, full = vision.window, vision.full
  return VisionInputs(
      pixel_values=np.pad(np.asarray(vision.pixel_values), rows),
      rotary_pos=np.pad(np.asarray(vision.rotary_pos), rows),
      window_order=np.concatenate([vision.window_order, extra]).astype(np.int32),
      restore_order=np.concatenate([vision.restore_order, extra]).astype(np.int32),
      window=_pad_segments(window, target, _pow2(window.gather.shape[0]), window.gather.shape[1]),
      full=_pad_segments(full, target, _pow2(full.gather.shape[0]), _pow2(full.gather.shape[1])))
