"""Command-line entry point: `python -m veripo_jax.main --config=configs/X.py --workdir=DIR`.

Runs the stages the config lists, in order. `--config.<field>=value` overrides any field.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags

from veripo_jax.fileio import write_json_atomic
from veripo_jax.inference import generate
from veripo_jax.models.qwen2_5_vl import Qwen25VL, get_preset, load_hf_checkpoint
from veripo_jax.parallel.sharding import activation_sharding, make_mesh, shard_model

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs; re-use resumes.")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Call jax.distributed.initialize() first (TPU pods, multi-GPU).")


def build_model(cfg, mesh):
  dtype = jnp.dtype(cfg.model.dtype)
  if cfg.model.checkpoint:
    return load_hf_checkpoint(cfg.model.checkpoint, dtype=dtype, mesh=mesh,
                              rope_mode=cfg.model.rope_mode)
  model = Qwen25VL(get_preset(cfg.model.preset), dtype=dtype, param_dtype=dtype,
                   rngs=nnx.Rngs(cfg.seed), rope_mode=cfg.model.rope_mode)
  return shard_model(model, mesh)


def random_video_batch(model: Qwen25VL, g, rng: np.random.RandomState) -> dict:
  """Left-padded prompts, each with one random video between random text tokens."""
  c, v = model.config, model.config.vision
  frames = g.video_frames + g.video_frames % 2
  gt, gh, gw = frames // 2, g.video_height // v.patch_size, g.video_width // v.patch_size
  n_patches, n_tokens = gt * gh * gw, gt * gh * gw // v.spatial_merge_size ** 2
  special = {c.image_token_id, c.video_token_id, c.vision_start_token_id, c.vision_end_token_id}
  vocab = [t for t in range(min(c.text.vocab_size, 4096)) if t not in special]
  rows = []
  for _ in range(g.batch_size):
    n = rng.randint(g.prompt_tokens // 2, g.prompt_tokens + 1)
    text = rng.choice(vocab, n).tolist()
    rows.append(text[: n // 2] + [c.vision_start_token_id] + [c.video_token_id] * n_tokens +
                [c.vision_end_token_id] + text[n // 2:])
  width = max(map(len, rows))
  ids = np.array([[c.pad_token_id] * (width - len(r)) + r for r in rows])
  mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows])
  return {"input_ids": ids, "attention_mask": mask,
          "pixel_values_videos": rng.randn(g.batch_size * n_patches, v.patch_dim),
          "video_grid_thw": np.array([[gt, gh, gw]] * g.batch_size),
          "second_per_grid_ts": np.ones((g.batch_size,), np.float32)}


def generate_demo(cfg, workdir: str) -> dict:
  mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
  model = build_model(cfg, mesh)
  g = cfg.generate
  batch = random_video_batch(model, g, np.random.RandomState(cfg.seed))
  kw = dict(temperature=g.temperature, top_p=g.top_p, top_k=g.top_k,
            num_samples=g.num_samples, mesh=mesh)
  timings = []
  for i in range(g.repeats + 1):                 # the first call compiles
    t = time.perf_counter()
    with activation_sharding(mesh):
      out = generate(model, batch, g.max_new_tokens, rng=jax.random.key(cfg.seed + i), **kw)
    jax.block_until_ready(out.tokens)
    timings.append(time.perf_counter() - t)
  steady = min(timings[1:]) if len(timings) > 1 else timings[0]
  tokens = int(np.asarray(out.lengths).sum())
  result = {"stage": "generate_demo", "rows": int(out.tokens.shape[0]),
            "generated_tokens": tokens, "first_call_s": timings[0], "steady_s": steady,
            "tokens_per_s": tokens / steady, "lengths": np.asarray(out.lengths).tolist(),
            "sample_tokens": np.asarray(out.tokens)[0].tolist()}
  write_json_atomic(os.path.join(workdir, "generate_demo.json"), result)
  logging.info("generate_demo: %d rows, %d tokens, %.1f tokens/s (first call %.1f s)",
               result["rows"], tokens, result["tokens_per_s"], timings[0])
  print(f"generate_demo: {result['rows']} rows x {g.max_new_tokens} new tokens, "
        f"{result['tokens_per_s']:.1f} tokens/s steady, first call {timings[0]:.1f} s; "
        f"wrote {os.path.join(workdir, 'generate_demo.json')}")
  return result


STAGES = {"generate_demo": generate_demo}


def main(argv):
  del argv
  cfg = _CONFIG.value
  if cfg is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required")
  if _MULTIHOST.value:
    jax.distributed.initialize()
  os.makedirs(_WORKDIR.value, exist_ok=True)
  for stage in cfg.stages:
    if stage not in STAGES:
      raise app.UsageError(f"config.stages: unknown stage {stage!r}; known: {sorted(STAGES)}")
    STAGES[stage](cfg, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
