"""Scenes -> real media bytes: H.264 mp4 clips (PyAV) and PNG images (PIL).

Real encoded bytes exercise the same decode path as user videos. The encoder runs single-threaded
so the bytes, and hence the dataset, are identical on every rebuild.
"""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image, ImageDraw

from veripo_jax.data.synthetic.world import Thing, WorldConfig


def draw_frame(things: list[Thing], frame: int, cfg: WorldConfig) -> Image.Image:
  image = Image.new("RGB", (cfg.width, cfg.height), (0, 0, 0))
  pen = ImageDraw.Draw(image)
  colors = dict(cfg.colors)
  r = cfg.shape_size // 2
  for t in things:
    if not t.appear <= frame < t.vanish:
      continue
    x, y = t.position(frame)
    fill = colors[t.color]
    if t.shape == "circle":
      pen.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif t.shape == "square":
      pen.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:
      pen.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
  return image


def encode_video(frames: list[Image.Image], fps: int, codec: str = "libx264",
                 crf: int = 18) -> bytes:
  buffer = io.BytesIO()
  with av.open(buffer, mode="w", format="mp4") as container:
    stream = container.add_stream(codec, rate=fps)
    stream.width, stream.height = frames[0].size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.thread_count = 1
    if codec == "libx264":
      stream.options = {"crf": str(crf)}
    for image in frames:
      frame = av.VideoFrame.from_ndarray(np.asarray(image), format="rgb24")
      container.mux(stream.encode(frame))
    container.mux(stream.encode())
  return buffer.getvalue()


def encode_png(image: Image.Image) -> bytes:
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()


def render_media(data_type: str, things: list[Thing], cfg: WorldConfig) -> bytes:
  """The media bytes of an example: an mp4 clip, a PNG (frame 0), or nothing for text."""
  if data_type == "video":
    frames = [draw_frame(things, f, cfg) for f in range(cfg.num_frames)]
    return encode_video(frames, cfg.fps, cfg.codec, cfg.crf)
  if data_type == "image":
    return encode_png(draw_frame(things, 0, cfg))
  return b""
