"""Loader throughput (examples/s) on the synthetic world and on the real fixture clip
(2 fps, 128·28·28 pixels per frame), with 0 and 2 Grain worker processes.

  python benchmarks/bench_loader.py [--workers=0,2] [--world_examples=256] [--clip_examples=24]

Worker start-up is excluded: timing starts after the first batch.
"""

import os
import tempfile
import time

from absl import app, flags

from veripo_jax.data.batching import BatchSpec
from veripo_jax.data.datasets import VideoR1Builder, data_source
from veripo_jax.data.loader import Loader, LoaderConfig, make_dataset
from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.vision import VisionSettings

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Grain worker counts to measure")
_WORLD_EXAMPLES = flags.DEFINE_integer("world_examples", 256, "synthetic examples timed")
_CLIP_EXAMPLES = flags.DEFINE_integer("clip_examples", 24, "real-clip examples timed")
_BATCH = flags.DEFINE_integer("batch_size", 8, "batch size")
_CLIP = flags.DEFINE_string(
    "clip", os.path.join(os.path.dirname(_REPO), "shared/fixtures/real_h264_640x360_22s.mp4"),
    "real video used for the second case")

WORLD_VISION = VisionSettings(video_min_pixels=56 * 56, max_pixels=112 * 112,
                              image_min_pixels=56 * 56, image_max_pixels=112 * 112)
CLIP_VISION = VisionSettings(fps=2.0, max_pixels=128 * 28 * 28)


def clip_dataset(root: str, clip: str, count: int) -> str:
  """A Video-R1-style dataset of `count` questions about the same clip."""
  os.symlink(os.path.abspath(clip), os.path.join(root, "clip.mp4"))
  lines = ['{"problem": "What happens in the video?", "data_type": "video", '
           '"problem_type": "multiple choice", "options": ["A. x", "B. y"], '
           f'"solution": "<answer>A</answer>", "path": "clip.mp4", "problem_id": {i}}}'
           for i in range(count)]
  path = os.path.join(root, "clip.jsonl")
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  builder = VideoR1Builder(name="clip", split_files={"train": path}, media_root=root,
                           data_dir=os.path.join(root, "tfds"), file_format="array_record")
  builder.download_and_prepare()
  return os.fspath(builder.data_dir)


def examples_per_second(source, config: LoaderConfig, examples: int) -> float:
  loader = Loader(make_dataset(source, config))
  next(loader)
  batches = max(1, examples // config.batch.batch_size)
  start = time.perf_counter()
  for _ in range(batches):
    next(loader)
  elapsed = time.perf_counter() - start
  del loader
  return batches * config.batch.batch_size / elapsed


def main(argv):
  del argv
  with tempfile.TemporaryDirectory() as root:
    world = build_world(os.path.join(root, "world"), seed=0, split_sizes={"train": 512})
    clip_dir = clip_dataset(root, _CLIP.value, 64)
    cases = {
        "synthetic world (112x112, 8 frames)": (world.dataset_dir, WORLD_VISION,
                                                _WORLD_EXAMPLES.value),
        "real clip (640x360 22 s, 2 fps, 128*28*28 px)": (clip_dir, CLIP_VISION,
                                                          _CLIP_EXAMPLES.value),
    }
    for name, (dataset_dir, vision, examples) in cases.items():
      source = data_source(dataset_dir, "train")
      for workers in map(int, _WORKERS.value):
        config = LoaderConfig(
            tokenizer_dir=world.tokenizer_dir, vision=vision, num_workers=workers,
            batch=BatchSpec(batch_size=_BATCH.value,
                            patch_buckets=(1024, 4096, 16384, 65536, 131072)))
        rate = examples_per_second(source, config, examples)
        print(f"{name}, {workers} workers: {rate:.1f} examples/s", flush=True)


if __name__ == "__main__":
  app.run(main)
