"""Images and videos -> `pixel_values`, `grid_thw`, `second_per_grid_t`, the Qwen2.5-VL way.

Resizing happens here, as qwen-vl-utils does it, so the model-side processor never resizes again:
images with PIL bicubic, video frames with torchvision's antialiased bicubic on tensors (ported to
numpy in `resize.py`; PIL's would differ from it by up to ~11-13 levels on real footage, in ~7%
of values). Every limit is a `VisionSettings` field so fps, frame counts and pixel budgets stay
train-time choices rather than dataset-build-time ones.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from veripo_jax.data import qwen_rules, resize
from veripo_jax.data.errors import BadExampleError
from veripo_jax.data.patches import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize, patchify
from veripo_jax.data.video import VideoSource, decode_frames

_PIXELS_28 = 28 * 28
VIDEO_RESIZE_MODES = ("torchvision", "pil")


@dataclasses.dataclass(frozen=True)
class VisionSettings:
  """Preprocessing limits; defaults are qwen-vl-utils' (porting spec §2.1-2.3)."""
  patch_size: int = 14
  temporal_patch_size: int = 2
  merge_size: int = 2
  image_min_pixels: int = 4 * _PIXELS_28
  image_max_pixels: int = 16384 * _PIXELS_28
  fps: float = 2.0
  min_frames: int = 4
  max_frames: int = 768
  nframes: int | None = None            # a fixed frame count overrides fps sampling
  video_min_pixels: int = 128 * _PIXELS_28
  video_max_pixels: int = 768 * _PIXELS_28
  video_total_pixels: int = 90316800    # 128000 tokens · 28² · 0.9: the whole clip's budget
  max_pixels: int | None = None         # the user's per-frame cap (e.g. 128·28·28 for training)
  max_aspect_ratio: float = 200
  image_mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
  image_std: tuple[float, float, float] = OPENAI_CLIP_STD
  # How video frames are resized: "torchvision" is qwen-vl-utils' tensor resize (bicubic,
  # antialiased, clamped and rounded to integers), what Qwen2.5-VL checkpoints and vLLM-based
  # evaluation see; "pil" is PIL bicubic per frame, this port's earlier behaviour.
  video_resize: str = "torchvision"

  def __post_init__(self):
    if self.video_resize not in VIDEO_RESIZE_MODES:
      raise ValueError(f"VisionSettings.video_resize must be one of {VIDEO_RESIZE_MODES}, "
                       f"got {self.video_resize!r}")

  @property
  def factor(self) -> int:
    return self.patch_size * self.merge_size

  @classmethod
  def for_model(cls, vision_config: Any, **overrides) -> "VisionSettings":
    """Settings whose patch geometry matches a model's `VisionConfig`."""
    return cls(patch_size=vision_config.patch_size,
               temporal_patch_size=vision_config.temporal_patch_size,
               merge_size=vision_config.spatial_merge_size, **overrides)


@dataclasses.dataclass(frozen=True)
class VisualInput:
  """One image or video, ready for the ViT."""
  pixel_values: np.ndarray             # (t·h·w, C·T·P·P) float32
  grid_thw: np.ndarray                 # (3,) int32, patch units
  second_per_grid_t: float | None      # video only: temporal_patch_size / sample_fps
  sample_fps: float | None = None
  frame_indices: np.ndarray | None = None

  def num_tokens(self, merge_size: int) -> int:
    return int(np.prod(self.grid_thw)) // merge_size**2


def load_image(source: bytes | str | os.PathLike | Image.Image) -> Image.Image:
  """RGB image; transparent images are composited on white, as qwen-vl-utils does."""
  if isinstance(source, Image.Image):
    image = source
  else:
    if not isinstance(source, (bytes, bytearray)) and not os.path.exists(source):
      raise BadExampleError("missing_media", f"{os.fspath(source)}: no such image file")
    try:
      image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
      image.load()
    except (UnidentifiedImageError, OSError) as e:
      raise BadExampleError("decode_error", f"cannot decode image: {e}") from e
  if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
    rgba = image.convert("RGBA")
    white = Image.new("RGB", rgba.size, (255, 255, 255))
    white.paste(rgba, mask=rgba.split()[3])
    return white
  return image.convert("RGB")


def resize_frames(frames: list[Image.Image], height: int, width: int) -> np.ndarray:
  """PIL bicubic resize of every frame -> uint8 (F, height, width, 3)."""
  return np.stack([
      np.asarray(f.resize((width, height), Image.Resampling.BICUBIC)) for f in frames])


def resize_video_frames(frames: list[Image.Image], height: int, width: int,
                        mode: str = "torchvision") -> np.ndarray:
  """Video frames -> uint8 (F, height, width, 3), resized the `VisionSettings.video_resize` way.

  "torchvision" gives the values qwen-vl-utils hands the processor (there as float32 integers).
  """
  if mode == "pil":
    return resize_frames(frames, height, width)
  if mode != "torchvision":
    raise ValueError(f"VisionSettings.video_resize must be one of {VIDEO_RESIZE_MODES}, "
                     f"got {mode!r}")
  return resize.resize_video(np.stack([np.asarray(f) for f in frames]), height, width)


def _to_visual(frames: np.ndarray, settings: VisionSettings, **extra) -> VisualInput:
  """(F, H, W, 3) pixel values in 0..255 (uint8, or float as the processor would get them)."""
  x = normalize(frames, settings.image_mean, settings.image_std)
  pixel_values, grid = patchify(x, settings.patch_size, settings.temporal_patch_size,
                                settings.merge_size)
  return VisualInput(pixel_values, grid, **extra)


def process_image(source, settings: VisionSettings) -> VisualInput:
  image = load_image(source)
  height, width = qwen_rules.smart_resize(
      image.height, image.width, settings.factor, settings.image_min_pixels,
      settings.image_max_pixels, settings.max_aspect_ratio)
  return _to_visual(resize_frames([image], height, width), settings, second_per_grid_t=None)


def video_sampler(settings: VisionSettings):
  """The qwen-vl-utils frame choice for a clip of `total` frames at `video_fps`."""
  def sample(total: int, video_fps: float) -> np.ndarray:
    n = qwen_rules.smart_nframes(
        total, video_fps, fps=settings.fps, min_frames=settings.min_frames,
        max_frames=settings.max_frames, nframes=settings.nframes,
        frame_factor=settings.temporal_patch_size)
    return qwen_rules.frame_indices(total, n)
  return sample


def process_video(source: VideoSource, settings: VisionSettings) -> VisualInput:
  decoded = decode_frames(source, video_sampler(settings))
  n = len(decoded.indices)
  first = decoded.frames[0]
  cap = qwen_rules.frame_max_pixels(
      n, total_pixels=settings.video_total_pixels, video_min_pixels=settings.video_min_pixels,
      video_max_pixels=settings.video_max_pixels, max_pixels=settings.max_pixels,
      frame_factor=settings.temporal_patch_size)
  height, width = qwen_rules.smart_resize(
      first.height, first.width, settings.factor, settings.video_min_pixels, cap,
      settings.max_aspect_ratio)
  fps = qwen_rules.sampled_fps(n, decoded.total_frames, decoded.video_fps)
  frames = resize_video_frames(decoded.frames, height, width, settings.video_resize)
  return _to_visual(frames, settings, second_per_grid_t=settings.temporal_patch_size / fps,
                    sample_fps=fps, frame_indices=decoded.indices)
