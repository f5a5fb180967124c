"""Decoding sampled frames from an mp4 (or any FFmpeg-readable container) with PyAV.

PyAV wheels bundle FFmpeg, so bytes straight out of an ArrayRecord decode without files or a system
ffmpeg. Only the frames the sampler picks are converted to images; every decoding failure becomes
a `BadExampleError`, so one broken clip is skipped and counted instead of killing a worker.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Callable

import av
import numpy as np
from PIL import Image

from veripo_jax.data.errors import BadExampleError

VideoSource = str | os.PathLike | bytes

# (total_frames, video_fps) -> sorted frame indices to keep.
FrameSampler = Callable[[int, float], np.ndarray]


@dataclasses.dataclass(frozen=True)
class DecodedFrames:
  frames: list[Image.Image]
  indices: np.ndarray
  total_frames: int
  video_fps: float


def _open(source: VideoSource):
  if isinstance(source, (bytes, bytearray, memoryview)):
    if not len(source):
      raise BadExampleError("empty_media", "video bytes are empty")
    return av.open(io.BytesIO(bytes(source)), mode="r")
  if not os.path.exists(source):
    raise BadExampleError("missing_media", f"{os.fspath(source)}: no such video file")
  return av.open(os.fspath(source), mode="r")


def _count_frames(container, stream) -> int:
  """Frame count when the container header lacks it: one video packet per frame."""
  count = sum(1 for packet in container.demux(stream) if packet.size)
  if count:
    container.seek(0, stream=stream)
  return count


def decode_frames(source: VideoSource, sampler: FrameSampler) -> DecodedFrames:
  """Decodes `source` once, keeping the frames at the indices `sampler` chooses."""
  name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
  try:
    with _open(source) as container:
      if not container.streams.video:
        raise BadExampleError("empty_video", f"{name}: no video stream (or no frames)")
      stream = container.streams.video[0]
      stream.thread_type = "AUTO"
      total = stream.frames or _count_frames(container, stream)
      rate = stream.average_rate or stream.guessed_rate
      if total == 0 or not rate:
        raise BadExampleError("empty_video", f"{name}: the video has no frames")
      indices = sampler(total, float(rate))
      wanted = set(indices.tolist())
      last = int(indices[-1])
      frames = []
      for i, frame in enumerate(container.decode(stream)):
        if i in wanted:
          frames.append(frame.to_image())
        if i >= last:
          break
  except av.FFmpegError as e:
    raise BadExampleError("decode_error", f"{name}: {e}") from e
  if len(frames) < len(indices):
    raise BadExampleError(
        "truncated", f"{name}: decoded {len(frames)} of {len(indices)} sampled frames "
        f"(header says {total} frames)")
  return DecodedFrames(frames, indices, total, float(rate))
