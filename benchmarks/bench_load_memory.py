"""Peak host memory while loading a ~1 GB Hugging Face checkpoint with `load_hf_checkpoint`.

Writes a random checkpoint (2 safetensors shards) in one process, then loads it in a fresh
process and reports the resident-memory growth during the load against the checkpoint size.
Target: at most 1.3x (streaming: the model's buffers plus about one tensor).

  python benchmarks/bench_load_memory.py [--hidden 1024 --layers 16 --vocab 32000 --dtype float32]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time


def model_config(args):
  from veripo_jax.models.qwen2_5_vl import Qwen25VLConfig, TextConfig, VisionConfig
  return Qwen25VLConfig(
      text=TextConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                      intermediate_size=args.hidden * 11 // 4, num_hidden_layers=args.layers,
                      num_attention_heads=args.hidden // 64, num_key_value_heads=args.hidden // 256,
                      head_dim=64, mrope_section=(8, 12, 12)),
      vision=VisionConfig(depth=2, hidden_size=256, intermediate_size=512, num_heads=4,
                          out_hidden_size=args.hidden, fullatt_block_indexes=(1,)))


def write(args, path):
  import jax.numpy as jnp
  from flax import nnx
  from veripo_jax.models.qwen2_5_vl import Qwen25VL, save_hf_checkpoint
  dtype = jnp.dtype(args.dtype)
  model = Qwen25VL(model_config(args), dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))
  total = sum(v.get_value().nbytes for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  save_hf_checkpoint(model, path, max_shard_bytes=total // 2 + 1)


def rss_bytes() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def load(args, path):
  import jax
  import jax.numpy as jnp
  from veripo_jax.models.qwen2_5_vl import load_hf_checkpoint
  jax.block_until_ready(jnp.ones(4) + 1)           # runtime initialised before the baseline
  baseline = rss_bytes()
  peak = [baseline]
  done = threading.Event()

  def sample():
    while not done.is_set():
      peak[0] = max(peak[0], rss_bytes())
      time.sleep(0.005)

  thread = threading.Thread(target=sample, daemon=True)
  thread.start()
  t = time.perf_counter()
  model = load_hf_checkpoint(path, dtype=jnp.dtype(args.dtype))
  seconds = time.perf_counter() - t
  done.set()
  thread.join()
  peak[0] = max(peak[0], rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
  del model
  print(json.dumps({"baseline": baseline, "peak": peak[0], "seconds": seconds}))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  for name, default in (("hidden", 1024), ("layers", 16), ("vocab", 32000)):
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--phase", choices=("all", "write", "load"), default="all")
  p.add_argument("--path", default="")
  args = p.parse_args()
  if args.phase == "write":
    return write(args, args.path)
  if args.phase == "load":
    return load(args, args.path)
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "ckpt")
    common = [f"--hidden={args.hidden}", f"--layers={args.layers}", f"--vocab={args.vocab}",
              f"--dtype={args.dtype}", f"--path={path}"]
    subprocess.run([sys.executable, __file__, "--phase=write", *common], check=True)
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if f.endswith(".safetensors"))
    out = subprocess.run([sys.executable, __file__, "--phase=load", *common], check=True,
                         capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
  growth = r["peak"] - r["baseline"]
  print(f"checkpoint: {size / 2**30:.3f} GiB ({args.dtype}, 2 shards)")
  print(f"load time: {r['seconds']:.1f} s")
  print(f"resident memory: baseline {r['baseline'] / 2**30:.3f} GiB, peak {r['peak'] / 2**30:.3f} "
        f"GiB, growth during load {growth / 2**30:.3f} GiB")
  print(f"peak growth / checkpoint size: {growth / size:.3f}x  (target <= 1.3x)")


if __name__ == "__main__":
  main()
