"""qwen-vl-utils arithmetic: resize targets, frame counts, frame indices, per-frame pixel caps.

These rules decide how many visual tokens an image or video costs; they must match the official
preprocessing exactly (porting spec §2.1, §2.3) or a checkpoint sees inputs it was not trained on.
"""

from __future__ import annotations

import math

import numpy as np

from veripo_jax.data.errors import BadExampleError


def round_by_factor(x: float, factor: int) -> int:
  return round(x / factor) * factor


def ceil_by_factor(x: float, factor: int) -> int:
  return math.ceil(x / factor) * factor


def floor_by_factor(x: float, factor: int) -> int:
  return math.floor(x / factor) * factor


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int,
                 max_aspect_ratio: float = 200) -> tuple[int, int]:
  """(h', w'), multiples of `factor`, with h'·w' in [min_pixels, max_pixels] and the aspect kept.

  The qwen-vl-utils variant (it differs from transformers' only for sides under factor/2).
  """
  if min(height, width) <= 0:
    raise BadExampleError("bad_size", f"image size {height}x{width} has an empty side")
  if max(height, width) / min(height, width) > max_aspect_ratio:
    raise BadExampleError(
        "aspect_ratio", f"aspect ratio of {height}x{width} exceeds {max_aspect_ratio}")
  h_bar = max(factor, round_by_factor(height, factor))
  w_bar = max(factor, round_by_factor(width, factor))
  if h_bar * w_bar > max_pixels:
    beta = math.sqrt(height * width / max_pixels)
    h_bar = floor_by_factor(height / beta, factor)
    w_bar = floor_by_factor(width / beta, factor)
  elif h_bar * w_bar < min_pixels:
    beta = math.sqrt(min_pixels / (height * width))
    h_bar = ceil_by_factor(height * beta, factor)
    w_bar = ceil_by_factor(width * beta, factor)
  return h_bar, w_bar


def smart_nframes(total_frames: int, video_fps: float, *, fps: float, min_frames: int,
                  max_frames: int, nframes: int | None = None, frame_factor: int = 2) -> int:
  """Number of frames to sample: `fps` frames per second, clamped, a multiple of `frame_factor`."""
  if nframes is not None:
    n = round_by_factor(nframes, frame_factor)
  else:
    lo = ceil_by_factor(min_frames, frame_factor)
    hi = floor_by_factor(min(max_frames, total_frames), frame_factor)
    wanted = total_frames / video_fps * fps
    n = floor_by_factor(min(min(max(wanted, lo), hi), total_frames), frame_factor)
  if not frame_factor <= n <= total_frames:
    raise BadExampleError(
        "too_few_frames",
        f"{total_frames} frame(s) cannot give {n} sampled frames (need {frame_factor}..total)")
  return n


def frame_indices(total_frames: int, nframes: int) -> np.ndarray:
  """Evenly spaced indices, `linspace(0, total-1, n).round()` (round half to even)."""
  return np.round(np.linspace(0, total_frames - 1, nframes)).astype(np.int64)


def sampled_fps(nframes: int, total_frames: int, video_fps: float) -> float:
  return nframes / total_frames * video_fps


def frame_max_pixels(nframes: int, *, total_pixels: int, video_min_pixels: int,
                     video_max_pixels: int, max_pixels: int | None = None,
                     frame_factor: int = 2) -> float:
  """Per-frame pixel cap: the video's total-pixel budget shared by its frames, then clamped.

  `max_pixels` is the user's cap (e.g. 128·28·28 at train time); it can only lower the result.
  Kept as a float: smart_resize's scale factor uses the exact value.
  """
  cap = max(min(video_max_pixels, total_pixels / nframes * frame_factor),
            int(video_min_pixels * 1.05))
  return cap if max_pixels is None else min(max_pixels, cap)
