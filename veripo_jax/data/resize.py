"""Antialiased bicubic video resizing, numerically the qwen-vl-utils (torchvision) way, in numpy.

qwen-vl-utils' `fetch_video` decodes uint8 (T, C, H, W) frames (torchcodec, decord or
torchvision.io all give uint8) and resizes them with `torchvision.transforms.functional.resize(
video, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True).float()`. On a uint8
tensor torchvision (`transforms/_functional_tensor.py::resize`) casts to float32, runs
`torch.nn.functional.interpolate(mode="bicubic", align_corners=False, antialias=True)`, clamps to
[0, 255], rounds (half to even) and casts back to uint8; the `.float()` comes after the resize.
So the processor is handed integers 0..255 stored as float32, and `resize_video` returns exactly
those values as uint8 (the same numbers in a quarter of the memory).

PyTorch's antialiased bicubic (ATen `native/cpu/UpSampleKernel.cpp`:
`HelperInterpCubic::aa_filter`, `HelperInterpBase::_compute_indices_min_size_weights_aa`,
`separable_upsample_generic_Nd_kernel_impl`) is PIL's convolution resampler computed in float32:
- Keys' cubic with a = -0.5 (the non-antialiased bicubic uses -0.75);
- scale = in / out; when downscaling (scale >= 1) the kernel widens: support 2·scale, taps
  evaluated at distance / scale; when upscaling, support 2 and plain distances;
- output pixel i is centred at scale·(i + 0.5) in input coordinates; its taps are the input
  pixels [int(center - support + 0.5), int(center + support + 0.5)) clipped to the image, at
  distance (j + 0.5 - center), divided by their sum: taps past the border are dropped and the rest
  renormalised (no edge replication);
- separable, the width axis first, then the height axis, with a float32 intermediate; an axis
  whose size does not change is left alone.

Each axis becomes one precomputed (out, in) weight matrix, built with ATen's float32 arithmetic
(including the fused multiply-adds its x86-64 build uses), so the weights equal torch's bit for
bit. Only the summation order of the matmuls differs, which moves an interpolated value by a few
float32 ulps, so after rounding a pixel can differ by one level where the value sits within
~1e-4 of a half. The matrices are banded, so each is applied as a few small dense matmuls over
blocks of output pixels, each reading only the input span its block needs, one frame at a time
(frames stay in cache; a frame-batched version was 2-3x slower).
"""

from __future__ import annotations

import functools

import numpy as np

_CUBIC_A = np.float32(-0.5)     # Keys' a on the antialiased (PIL-compatible) path
_INTERP_SIZE = 4                # bicubic taps before widening
_ROW_BLOCK = 16                 # output rows per matmul on the height axis
_PIXEL_BLOCK = 8                # output pixels per matmul on the channel-interleaved width axis


def _fma(a, b, c) -> np.ndarray:
  """float32 fused multiply-add: the float32 product is exact in float64, then one rounding."""
  return (np.asarray(a, np.float64) * b + np.asarray(c, np.float64)).astype(np.float32)


def _keys_cubic(x: np.ndarray) -> np.ndarray:
  """ATen's bicubic `aa_filter` in float32: Keys' cubic convolution with a = -0.5.

  Written with the fused multiply-adds the compiler forms in PyTorch's x86-64 (AVX2/AVX512)
  kernels, which makes the weights bit-identical to torch's there; unfused they differ by an ulp.
  """
  a, f32 = _CUBIC_A, np.float32
  x = np.abs(x).astype(f32)
  inner = _fma((_fma(a + f32(2), x, -(a + f32(3))) * x).astype(f32), x, f32(1))
  outer = _fma(_fma(_fma(a, x, f32(-5) * a), x, f32(8) * a), x, f32(-4) * a)
  return np.where(x < 1, inner, np.where(x < 2, outer, f32(0))).astype(f32)


@functools.lru_cache(maxsize=64)
def aa_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) float32 weights of PyTorch's antialiased bicubic along one axis.

  Row i holds output pixel i's normalised taps, zero elsewhere; read-only (it is cached).
  """
  if in_size < 1 or out_size < 1:
    raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
  f32 = np.float32
  scale = f32(in_size) / f32(out_size)                    # area_pixel_compute_scale<float>
  support = f32(_INTERP_SIZE * 0.5 * scale) if scale >= 1 else f32(_INTERP_SIZE * 0.5)
  invscale = f32(1.0 / float(scale)) if scale >= 1 else f32(1)
  max_taps = int(np.ceil(support)) * 2 + 1
  i = np.arange(out_size)
  center = (float(scale) * (i + 0.5)).astype(f32)         # double product, stored as float
  xmin = np.maximum(np.trunc((center - support).astype(np.float64) + 0.5).astype(np.int64), 0)
  xmax = np.minimum(np.trunc((center + support).astype(np.float64) + 0.5).astype(np.int64),
                    in_size)
  xsize = np.clip(xmax - xmin, 0, max_taps)
  taps = np.zeros((out_size, max_taps), f32)
  total = np.zeros(out_size, f32)
  for j in range(max_taps):                               # sequential float32 sum, like ATen
    distance = ((xmin + j).astype(f32) - center).astype(np.float64) + 0.5
    w = np.where(j < xsize, _keys_cubic((distance * float(invscale)).astype(f32)), f32(0))
    taps[:, j] = w
    total = (total + w).astype(f32)
  nonzero = total != 0
  taps[nonzero] /= total[nonzero, None]
  weights = np.zeros((out_size, in_size), f32)
  for j in range(max_taps):
    valid = j < xsize
    weights[i[valid], (xmin + j)[valid]] = taps[valid, j]
  weights.setflags(write=False)
  return weights


def _blocks(weights: np.ndarray, block: int) -> list[tuple[slice, slice, np.ndarray]]:
  """(output rows, the input span they read, the dense weight block) per `block` output rows."""
  out = []
  for start in range(0, weights.shape[0], block):
    rows = slice(start, min(start + block, weights.shape[0]))
    used = np.flatnonzero(np.any(weights[rows] != 0, axis=0))
    span = slice(int(used[0]), int(used[-1]) + 1) if used.size else slice(0, 1)
    out.append((rows, span, np.ascontiguousarray(weights[rows, span])))
  return out


@functools.lru_cache(maxsize=64)
def _height_plan(in_size: int, out_size: int) -> tuple:
  """Blocks of the height weights, applied from the left: y[rows] = block @ x[span]."""
  plan = _blocks(aa_bicubic_weights(in_size, out_size), _ROW_BLOCK)
  for _, _, block in plan:
    block.setflags(write=False)
  return tuple(plan)


@functools.lru_cache(maxsize=64)
def _width_plan(in_size: int, out_size: int, channels: int) -> tuple:
  """Blocks of the width weights for rows of interleaved pixels (pixel·C + channel), applied
  from the right: y[:, cols] = x[:, span] @ block, with block = kron(weights, I_C)ᵀ."""
  eye = np.eye(channels, dtype=np.float32)
  plan = []
  for rows, span, block in _blocks(aa_bicubic_weights(in_size, out_size), _PIXEL_BLOCK):
    wide = np.ascontiguousarray(np.kron(block, eye).T)
    wide.setflags(write=False)
    plan.append((slice(rows.start * channels, rows.stop * channels),
                 slice(span.start * channels, span.stop * channels), wide))
  return tuple(plan)


def _resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
  """One (H, W, C) frame -> float32 (height, width·C): the width pass, then the height pass.

  The frame keeps its (H, W·C) memory layout throughout, so neither pass transposes anything.
  """
  in_h, in_w, c = frame.shape
  x = np.asarray(frame, np.float32).reshape(in_h, in_w * c)
  if in_w != width:
    y = np.empty((in_h, width * c), np.float32)
    for cols, span, block in _width_plan(in_w, width, c):
      np.matmul(x[:, span], block, out=y[:, cols])
    x = y
  if in_h != height:
    y = np.empty((height, width * c), np.float32)
    for rows, span, block in _height_plan(in_h, height):
      np.matmul(block, x[span], out=y[rows])
    x = y
  return x


def _check(frames, height: int, width: int) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim != 4:
    raise ValueError(f"expected (F, H, W, C) frames, got shape {frames.shape}")
  if height < 1 or width < 1:
    raise ValueError(f"target size must be positive, got {height}x{width}")
  return frames


def resize_bicubic_aa(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """(F, H, W, C) frames of any real dtype -> float32 (F, height, width, C), unclamped.

  `torch.nn.functional.interpolate(x, (height, width), mode="bicubic", align_corners=False,
  antialias=True)` of the float32 frames (channels last here), up to float32 summation order.
  """
  frames = _check(frames, height, width)
  out = np.empty((frames.shape[0], height, width, frames.shape[3]), np.float32)
  for f, frame in enumerate(frames):
    out[f] = _resize_frame(frame, height, width).reshape(height, width, -1)
  return out


def resize_video(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 (F, H, W, C) -> uint8 (F, height, width, C): qwen-vl-utils' video frame resize.

  Equals `torchvision.transforms.functional.resize(frames_as_tchw, [height, width],
  interpolation=InterpolationMode.BICUBIC, antialias=True)`: float32 interpolation, clamp to
  [0, 255], round half to even, back to uint8 (a same-size resize returns the frames unchanged).
  qwen-vl-utils' `.float()` afterwards changes no value.
  """
  frames = _check(frames, height, width)
  if frames.dtype != np.uint8:
    raise ValueError(f"expected uint8 frames, got {frames.dtype}")
  if frames.shape[1:3] == (height, width):
    return frames.copy()
  out = np.empty((frames.shape[0], height, width, frames.shape[3]), np.uint8)
  for f, frame in enumerate(frames):
    y = _resize_frame(frame, height, width)
    np.clip(y, 0, 255, out=y)
    np.rint(y, out=y)                                     # half to even, like torch.round
    out[f] = y.reshape(height, width, -1)
  return out
