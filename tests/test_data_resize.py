"""Video frame resizing: `resize.py` against PyTorch's antialiased bicubic as torchvision runs it
for qwen-vl-utils, on the real clip and on random frames; how `process_video` picks the path."""

import dataclasses
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from veripo_jax.data import qwen_rules, resize
from veripo_jax.data.patches import normalize, patchify
from veripo_jax.data.video import decode_frames
from veripo_jax.data.vision import (VisionSettings, process_image, process_video, resize_frames,
                                    video_sampler)

# shared/ sits beside the repository checkout.
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
CLIP = str(SHARED / "fixtures/real_h264_640x360_22s.mp4")
# The protocol's video settings (VerIPO training/eval): fps 2, <= 128 frames, <= 256·28² pixels.
PROTOCOL = VisionSettings(fps=2.0, max_frames=128, max_pixels=256 * 28 * 28)


def _torchvision_resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """qwen-vl-utils' `transforms.functional.resize(video, [h, w], BICUBIC, antialias=True)` on
  uint8 frames, written out as torchvision 0.28's `_functional_tensor.resize` runs it: cast to
  float32, interpolate, clamp to [0, 255], round, cast to uint8 (identity when the size holds).

  Written out because the index's torchvision wheels are CUDA builds that cannot import beside
  the CPU torch (see requirements-test.txt); `test_reference_is_torchvision` checks this against
  torchvision itself wherever torchvision imports.
  """
  video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
  if tuple(video.shape[-2:]) == (height, width):
    out = video
  else:
    out = torch.nn.functional.interpolate(video.float(), size=[height, width], mode="bicubic",
                                          align_corners=False, antialias=True)
    out = out.clamp(min=0, max=255).round().to(torch.uint8)
  return out.permute(0, 2, 3, 1).numpy()


def _torch_interpolate(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  x = torch.from_numpy(np.ascontiguousarray(frames, np.float32)).permute(0, 3, 1, 2)
  y = torch.nn.functional.interpolate(x, size=(height, width), mode="bicubic",
                                      align_corners=False, antialias=True)
  return y.permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def protocol_clip():
  """The real clip's frames as the project decodes and samples them, and the protocol size."""
  decoded = decode_frames(CLIP, video_sampler(PROTOCOL))
  n = len(decoded.indices)
  cap = qwen_rules.frame_max_pixels(
      n, total_pixels=PROTOCOL.video_total_pixels, video_min_pixels=PROTOCOL.video_min_pixels,
      video_max_pixels=PROTOCOL.video_max_pixels, max_pixels=PROTOCOL.max_pixels)
  first = decoded.frames[0]
  size = qwen_rules.smart_resize(first.height, first.width, PROTOCOL.factor,
                                 PROTOCOL.video_min_pixels, cap)
  return decoded, np.stack([np.asarray(f) for f in decoded.frames]), size


def test_real_clip_matches_torchvision_within_one_level(protocol_clip):
  decoded, frames, (height, width) = protocol_clip
  assert frames.shape == (44, 360, 640, 3) and (height, width) == (336, 588)
  want = _torchvision_resize(frames, height, width).astype(np.int16)
  ours = resize.resize_video(frames, height, width)
  assert ours.dtype == np.uint8 and ours.shape == want.shape
  diff = np.abs(ours.astype(np.int16) - want)
  # Same weights, different float32 summation order: only near-half values may round apart.
  assert diff.max() <= 1
  assert (diff > 0).mean() < 1e-4, f"{(diff > 0).sum()} of {diff.size} values differ"
  # The previous path, PIL bicubic per frame, is off by far more: this comparison can fail.
  pil = resize_frames(decoded.frames, height, width).astype(np.int16)
  pil_diff = np.abs(pil - want)
  assert pil_diff.max() >= 5 and (pil_diff > 0).mean() > 0.01


SHAPES = [
    ((360, 640), (252, 448)),   # the clip to a 128·28² budget: non-integer ratios (10/7)
    ((360, 640), (336, 588)),   # the clip at the protocol size
    ((37, 53), (28, 84)),       # down in height, up in width
    ((7, 9), (70, 90)),         # upscaling x10
    ((20, 30), (56, 112)),      # upscaling by non-integer ratios
    ((61, 29), (28, 28)),
    ((50, 50), (3, 2)),         # heavy downscaling: wide kernels, clipped at both borders
    ((360, 640), (360, 448)),   # one axis unchanged
    ((1, 5), (4, 2)),
]


@pytest.mark.parametrize("src,dst", SHAPES)
def test_random_frames_match_torch_interpolate(src, dst):
  rng = np.random.default_rng(sum(src + dst))
  frames = rng.uniform(-20, 275, (2, *src, 3)).astype(np.float32)   # overshoot: no clamping
  ours = resize.resize_bicubic_aa(frames, *dst)
  np.testing.assert_allclose(ours, _torch_interpolate(frames, *dst), rtol=0, atol=5e-4)
  u8 = rng.integers(0, 256, (2, *src, 3), dtype=np.uint8)
  diff = np.abs(resize.resize_video(u8, *dst).astype(np.int16)
                - _torchvision_resize(u8, *dst).astype(np.int16))
  assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


@pytest.mark.parametrize("n_in,n_out", [(640, 448), (360, 252), (53, 84), (7, 90), (1000, 3),
                                        (5, 1), (100, 101)])
def test_weights_equal_torch(n_in, n_out):
  # One-hot rows through torch's width-only pass read out its weights exactly.
  eye = torch.eye(n_in).reshape(n_in, 1, 1, n_in)
  theirs = torch.nn.functional.interpolate(eye, size=(1, n_out), mode="bicubic",
                                           align_corners=False, antialias=True)
  theirs = theirs.reshape(n_in, n_out).T.numpy()
  ours = resize.aa_bicubic_weights(n_in, n_out)
  # Bit-identical on x86-64 builds (fused multiply-adds); an ulp apart on builds without them.
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=2e-7)
  np.testing.assert_allclose(ours.sum(1, dtype=np.float64), 1, rtol=0, atol=1e-5)


def test_same_size_is_identity():
  frames = np.random.default_rng(0).integers(0, 256, (3, 28, 56, 3), dtype=np.uint8)
  np.testing.assert_array_equal(resize.resize_video(frames, 28, 56), frames)
  np.testing.assert_array_equal(resize.resize_bicubic_aa(frames, 28, 56), frames)


def test_reference_is_torchvision():
  try:
    from torchvision.transforms import InterpolationMode, functional as tvf
  except (ImportError, RuntimeError, OSError) as e:
    pytest.skip(f"torchvision does not import here: {e}")
  frames = np.random.default_rng(1).integers(0, 256, (2, 36, 64, 3), dtype=np.uint8)
  for size in ((28, 56), (56, 84), (36, 64)):
    tv = tvf.resize(torch.from_numpy(frames).permute(0, 3, 1, 2), list(size),
                    interpolation=InterpolationMode.BICUBIC, antialias=True).float()
    np.testing.assert_array_equal(tv.permute(0, 2, 3, 1).numpy(),
                                  _torchvision_resize(frames, *size).astype(np.float32))


SMALL = dataclasses.replace(PROTOCOL, fps=0.5, max_pixels=128 * 28 * 28)   # 10 frames, 224x420


def _expected(settings, resize_fn):
  decoded = decode_frames(CLIP, video_sampler(settings))
  frames = resize_fn(decoded.frames)
  pixel_values, grid = patchify(normalize(frames, settings.image_mean, settings.image_std),
                                settings.patch_size, settings.temporal_patch_size,
                                settings.merge_size)
  return pixel_values, grid


def test_process_video_uses_torchvision_resize_by_default():
  assert VisionSettings().video_resize == "torchvision"
  v = process_video(CLIP, SMALL)
  pixel_values, grid = _expected(SMALL, lambda fs: resize.resize_video(
      np.stack([np.asarray(f) for f in fs]), 224, 420))
  np.testing.assert_array_equal(v.grid_thw, grid)
  np.testing.assert_array_equal(v.grid_thw, [5, 16, 30])
  np.testing.assert_array_equal(v.pixel_values, pixel_values)


def test_process_video_pil_keeps_the_old_values():
  settings = dataclasses.replace(SMALL, video_resize="pil")
  v = process_video(CLIP, settings)
  pixel_values, _ = _expected(settings, lambda fs: resize_frames(fs, 224, 420))
  np.testing.assert_array_equal(v.pixel_values, pixel_values)
  assert np.abs(v.pixel_values - process_video(CLIP, SMALL).pixel_values).max() > 0.05


def test_images_stay_on_pil():
  image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 130, 3), np.uint8))
  for mode in ("torchvision", "pil"):
    v = process_image(image, VisionSettings(video_resize=mode))
    h, w = v.grid_thw[1:] * 14
    x = normalize(resize_frames([image], h, w))
    np.testing.assert_array_equal(v.pixel_values, patchify(x, 14, 2, 2)[0])


def test_bad_video_resize_names_the_field():
  with pytest.raises(ValueError, match="video_resize"):
    VisionSettings(video_resize="bilinear")
