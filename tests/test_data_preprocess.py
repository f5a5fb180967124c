"""Preprocessing parity: qwen-vl-utils frame sampling, smart_resize, the HF PIL image processor,
the spec's patchify element formula; and each bad-media case."""

import io
import pathlib

import av
import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
    Qwen2VLImageProcessorPil, smart_resize as hf_smart_resize)

from veripo_jax.data import qwen_rules
from veripo_jax.data.errors import BadExampleError
from veripo_jax.data.patches import normalize, patchify
from veripo_jax.data.synthetic.render import encode_video
from veripo_jax.data.vision import VisionSettings, process_image, process_video

# shared/ sits beside the repository checkout.
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
CLIP = str(SHARED / "fixtures/real_h264_640x360_22s.mp4")


def _clip_meta():
  with av.open(CLIP) as c:
    s = c.streams.video[0]
    return s.frames, float(s.average_rate), s.height, s.width


def _qwen_vl_utils_rule(total, video_fps, fps, min_frames=4, max_frames=768):
  """The rule of qwen-vl-utils' smart_nframes + torch.linspace sampling, written out here."""
  min_f = int(np.ceil(min_frames / 2) * 2)
  max_f = int(np.floor(min(max_frames, total) / 2) * 2)
  n = total / video_fps * fps
  n = min(min(max(n, min_f), max_f), total)
  n = int(np.floor(n / 2) * 2)
  idx = torch.linspace(0, total - 1, n).round().long().numpy()
  return n, idx, n / total * video_fps


@pytest.mark.parametrize("fps,max_frames,max_pixels", [(2.0, 768, 128 * 28 * 28),
                                                       (1.0, 8, None)])
def test_clip_sampling_matches_qwen_vl_utils(fps, max_frames, max_pixels):
  total, video_fps, height, width = _clip_meta()
  settings = VisionSettings(fps=fps, max_frames=max_frames, max_pixels=max_pixels)
  v = process_video(CLIP, settings)
  n, idx, sample_fps = _qwen_vl_utils_rule(total, video_fps, fps, max_frames=max_frames)
  np.testing.assert_array_equal(v.frame_indices, idx)
  assert v.sample_fps == pytest.approx(sample_fps, rel=1e-12)
  assert v.second_per_grid_t == pytest.approx(2 / sample_fps, rel=1e-12)
  # Per-frame budget, then smart_resize (transformers' version agrees away from tiny sides).
  cap = max(min(768 * 784, 90316800 / n * 2), int(128 * 784 * 1.05))
  cap = cap if max_pixels is None else min(max_pixels, cap)
  h, w = hf_smart_resize(height, width, 28, 128 * 784, cap)
  np.testing.assert_array_equal(v.grid_thw, [n // 2, h // 14, w // 14])
  assert v.pixel_values.shape == (n // 2 * h // 14 * w // 14, 1176)


def test_smart_resize_qwen_vl_utils_degenerate_case():
  # porting spec §0.12: qwen-vl-utils keeps (28, 1988) where transformers gives (28, 812).
  assert qwen_rules.smart_resize(10, 2000, 28, 56 * 56, 28 * 28 * 1280) == (28, 1988)


def test_frame_count_rules():
  assert qwen_rules.smart_nframes(491, 22.29, fps=2, min_frames=4, max_frames=768) == 44
  assert qwen_rules.smart_nframes(100, 25, fps=2, min_frames=4, max_frames=768, nframes=7) == 8
  assert qwen_rules.smart_nframes(6, 30, fps=2, min_frames=4, max_frames=768) == 4


@pytest.mark.parametrize("size", [(123, 457), (640, 360), (29, 61)])
def test_image_matches_hf_pil_processor(size):
  rng = np.random.default_rng(0)
  array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
  image = Image.fromarray(array)
  settings = VisionSettings()
  ours = process_image(image, settings)
  # Official path: qwen-vl-utils resizes with PIL, then the HF processor (no-op resize).
  h, w = qwen_rules.smart_resize(image.height, image.width, 28, settings.image_min_pixels,
                                 settings.image_max_pixels)
  hf = Qwen2VLImageProcessorPil(min_pixels=settings.image_min_pixels,
                                max_pixels=settings.image_max_pixels)(
                                    images=[image.resize((w, h), Image.Resampling.BICUBIC)],
                                    return_tensors="np")
  np.testing.assert_array_equal(ours.grid_thw, hf["image_grid_thw"][0])
  np.testing.assert_allclose(ours.pixel_values, hf["pixel_values"], atol=1e-5, rtol=0)


def test_rgba_image_is_composited_on_white():
  rgba = np.zeros((56, 56, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[:28, :, 3] = 255             # top half opaque red, bottom half transparent
  ours = process_image(Image.fromarray(rgba, "RGBA"), VisionSettings())
  expected = np.full((56, 56, 3), 255, np.uint8)
  expected[:28] = (200, 0, 0)
  ref = process_image(Image.fromarray(expected), VisionSettings())
  np.testing.assert_array_equal(ours.pixel_values, ref.pixel_values)


def test_patchify_matches_element_formula():
  rng = np.random.default_rng(1)
  frames = rng.integers(0, 256, (3, 56, 84, 3), dtype=np.uint8)   # odd count: padded to 4
  x = normalize(frames)
  pv, grid = patchify(x, 14, 2, 2)
  gt, gh, gw = grid
  assert (gt, gh, gw) == (2, 4, 6)
  xp = np.concatenate([x, x[-1:]])
  t, bh, bw, mh, mw, c, tau, py, px = np.meshgrid(
      *(np.arange(n) for n in (gt, gh // 2, gw // 2, 2, 2, 3, 2, 14, 14)), indexing="ij")
  rows = ((t * (gh // 2) + bh) * (gw // 2) + bw) * 4 + mh * 2 + mw
  cols = c * 392 + tau * 196 + py * 14 + px
  values = xp[2 * t + tau, c, (2 * bh + mh) * 14 + py, (2 * bw + mw) * 14 + px]
  expected = np.zeros_like(pv)
  expected[rows, cols] = values
  np.testing.assert_array_equal(pv, expected)


def test_normalize_uses_clip_mean_std():
  x = normalize(np.full((1, 2, 2, 3), 255, np.uint8))
  np.testing.assert_allclose(x[0, :, 0, 0], (1 - np.array([0.48145466, 0.4578275, 0.40821073]))
                             / np.array([0.26862954, 0.26130258, 0.27577711]), rtol=1e-6)


# Bad input: each case is a BadExampleError with its own reason (the loader skips and counts).

def _raises(reason, fn, *args):
  with pytest.raises(BadExampleError) as e:
    fn(*args)
  assert e.value.reason == reason, str(e.value)


def test_corrupt_video_bytes():
  _raises("decode_error", process_video, b"\x00garbage" * 100, VisionSettings())


def test_truncated_video_bytes():
  data = open(CLIP, "rb").read()
  with pytest.raises(BadExampleError) as e:
    process_video(data[: len(data) // 3], VisionSettings())
  assert e.value.reason in ("truncated", "decode_error")


def test_empty_and_missing_media(tmp_path):
  _raises("empty_media", process_video, b"", VisionSettings())
  _raises("missing_media", process_video, str(tmp_path / "nope.mp4"), VisionSettings())
  _raises("missing_media", process_image, str(tmp_path / "nope.png"), VisionSettings())
  _raises("decode_error", process_image, b"not an image", VisionSettings())


def test_zero_frame_video():
  buffer = io.BytesIO()
  with av.open(buffer, mode="w", format="mp4") as c:
    s = c.add_stream("libx264", rate=2)
    s.width, s.height, s.pix_fmt = 56, 56, "yuv420p"
    c.start_encoding()              # header with a video stream, then no frames
  _raises("empty_video", process_video, buffer.getvalue(), VisionSettings())


def test_one_frame_video():
  one = encode_video([Image.new("RGB", (56, 56), (9, 9, 9))], fps=2)
  _raises("too_few_frames", process_video, one, VisionSettings())


def test_extreme_aspect_ratio():
  _raises("aspect_ratio", process_image, Image.new("RGB", (4020, 20)), VisionSettings())
  video = encode_video([Image.new("RGB", (1010, 4))] * 4, fps=2)
  with pytest.raises(BadExampleError) as e:
    process_video(video, VisionSettings())
  assert e.value.reason in ("aspect_ratio", "decode_error")
