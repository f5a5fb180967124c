"""Benchmark-eval throughput (items/s) of the tiny random model on this machine.

  python benchmarks/bench_eval.py --items=32 --max_new_tokens=64 --batch_size=8

Runs the eval config's `benchmark` stage (configs/eval_qwen2_5_vl_7b.py, the real code path) on
the first `items` MMVU questions with `eval.smoke`'s stand-in checkpoint and clips, twice: a cold
run (compiles) and a warm one in a fresh workdir sharing the compilation cache. Prints items/s
of each, from the stage's own wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from veripo_jax.config_utils import load_config_file  # noqa: E402
from veripo_jax.eval.smoke import make_checkpoint, make_videos  # noqa: E402
from veripo_jax.rl.loop import run  # noqa: E402
from veripo_jax.train.compile_cache import enable_compilation_cache  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "eval_qwen2_5_vl_7b.py")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--items", type=int, default=32)
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--max_new_tokens", type=int, default=64)
  args = p.parse_args()
  root = tempfile.mkdtemp(prefix="bench_eval_")
  ckpt = make_checkpoint(os.path.join(root, "checkpoint"))
  videos = os.path.join(root, "videos")
  make_videos(videos, ["mmvu"], args.items)
  enable_compilation_cache("", root)            # ROOT/compilation_cache
  for label in ("cold", "warm"):
    cfg = load_config_file(CONFIG, "gpu")
    cfg.model.checkpoint = ckpt
    cfg.model.dtype = cfg.model.param_dtype = "float32"
    cfg.eval.benchmarks = "mmvu"
    cfg.eval.video_root = videos
    cfg.eval.batch_size = args.batch_size
    cfg.eval.max_new_tokens = args.max_new_tokens
    cfg.eval.max_items = args.items
    workdir = os.path.join(root, label)
    start = time.perf_counter()
    run(cfg, workdir)
    total = time.perf_counter() - start
    with open(os.path.join(workdir, "stages", "benchmarks", "done.json")) as f:
      stage_s = json.load(f)["wall_s"]
    with open(os.path.join(workdir, "stages", "benchmarks", "eval_report.json")) as f:
      b = json.load(f)["benchmarks"][0]
    print(f"{label}: {b['scored']} items in {stage_s:.1f} s (run {total:.1f} s): "
          f"{b['scored'] / stage_s:.2f} items/s, mean length {b['mean_length']:.1f} tokens")


if __name__ == "__main__":
  main()
