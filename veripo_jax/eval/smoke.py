"""A stand-in for a real checkpoint and benchmark videos, to try the eval command end to end.

  python -m veripo_jax.eval.smoke --out=/tmp/eval_smoke --benchmarks=mmvu,vsi_bench --items=8

writes OUT/checkpoint (a tiny random Qwen2.5-VL with its tokenizer, in the Hugging Face layout)
and OUT/videos/<video_path> (short random clips) for the first `items` questions of each shipped
question file, so `--config.model.checkpoint=OUT/checkpoint --config.eval.video_root=OUT/videos`
runs the real code path in a minute on a CPU. Its scores mean nothing.
"""

from __future__ import annotations

import os

import numpy as np
from absl import app, flags
from flax import nnx
from PIL import Image

from veripo_jax.data.synthetic.render import encode_video
from veripo_jax.data.synthetic.tokenizer import build_tokenizer, save_tokenizer
from veripo_jax.data.tokenization import load_tokenizer
from veripo_jax.eval import prompts
from veripo_jax.eval.benchmarks import load_benchmark, question_file, shipped_questions_dir
from veripo_jax.fileio import temp_dir_beside
from veripo_jax.models.qwen2_5_vl import (Qwen25VL, fit_to_tokenizer, get_preset,
                                         save_hf_checkpoint)


def make_checkpoint(path: str, seed: int = 0) -> str:
  """A tiny random Qwen2.5-VL checkpoint whose tokenizer knows the eval templates' words."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tokenizer_dir = temp_dir_beside(path)
  save_tokenizer(build_tokenizer([prompts.OPTION_TEMPLATE, prompts.NUMBER_TEMPLATE,
                                  "How many chair(s) are in this room? A. B. C. D. 3 4"] * 4,
                                 vocab_size=400), tokenizer_dir)
  config = fit_to_tokenizer(get_preset("tiny"), load_tokenizer(tokenizer_dir))
  save_hf_checkpoint(Qwen25VL(config, rngs=nnx.Rngs(seed)), path)
  for name in os.listdir(tokenizer_dir):            # a checkpoint holds its tokenizer
    os.replace(os.path.join(tokenizer_dir, name), os.path.join(path, name))
  os.rmdir(tokenizer_dir)
  return path


def random_clip(seconds: float, seed: int, size: tuple[int, int] = (84, 56), fps: int = 4
                ) -> bytes:
  """An h264 clip of random frames (`size` = width, height)."""
  rng = np.random.default_rng(seed)
  frames = [Image.fromarray(rng.integers(0, 255, size[::-1] + (3,), np.uint8))
            for _ in range(max(1, int(seconds * fps)))]
  return encode_video(frames, fps=fps)


def make_videos(video_root: str, benchmarks: list[str], items: int) -> int:
  """Clips (1-4 s) for the first `items` questions of each shipped benchmark; returns how many."""
  written = 0
  for name in benchmarks:
    data = load_benchmark(name, question_file(name, shipped_questions_dir()), video_root)
    first = sorted(data.items + data.missing_items, key=lambda i: i.index)[:items]
    for k, item in enumerate(first):
      os.makedirs(os.path.dirname(item.video), exist_ok=True)
      if not os.path.exists(item.video):
        with open(item.video, "wb") as f:
          f.write(random_clip(1 + k % 4, k))
        written += 1
  return written


_OUT = flags.DEFINE_string("out", None, "Directory for checkpoint/ and videos/.", required=True)
_BENCHMARKS = flags.DEFINE_list("benchmarks", ["mmvu", "vsi_bench"], "Shipped benchmarks.")
_ITEMS = flags.DEFINE_integer("items", 8, "Questions per benchmark to make videos for.")


def main(argv):
  del argv
  checkpoint = os.path.join(_OUT.value, "checkpoint")
  if not os.path.exists(checkpoint):
    make_checkpoint(checkpoint)
  n = make_videos(os.path.join(_OUT.value, "videos"), _BENCHMARKS.value, _ITEMS.value)
  print(f"checkpoint: {checkpoint}\nvideos: {os.path.join(_OUT.value, 'videos')} ({n} new)")


if __name__ == "__main__":
  app.run(main)
