"""`python -m veripo_jax.compile_check`: every program of a config's stages compiled for a TPU
topology on this CPU host (libtpu), measured against the chips' HBM."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from veripo_jax.compile_check.topology import GIB, TopologyError, parse_topology

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "tiny.py")
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="libtpu is not installed (requirements-tpu.txt)")
# Small prompts and videos keep the compilations short; the programs are the same.
SMALL = ["--prompt_length=128", "--max_frames=4"]


def run_tool(*args, timeout=900):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env.pop("JAX_PLATFORMS", None)          # the tool's own default (cpu) is under test
  return subprocess.run([sys.executable, "-m", "veripo_jax.compile_check", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def expected_programs(cfg, hosts: int) -> list[tuple[str, str]]:
  """(stage, program) the loop's stages run, from their typed configs (rl.plan), in order."""
  from veripo_jax.rl.plan import plan
  out = []
  for name, stage in plan(cfg).items():
    c, kind = stage.config, stage.kind
    judge = ("judge_init", "judge_prefill", "judge_insert", "judge_generate")
    frozen_tower = any(p.startswith("^visual") for p in getattr(c, "frozen", ()))
    media = getattr(getattr(c, "data", None), "template", "") != "judge"
    features = ("features",) if frozen_tower and media else ()
    if kind == "sft":
      micro = math.ceil(c.data.batch_size * hosts / c.micro_batch)
      names = features + ("accumulate",) + ("accumulate_next",) * (micro > 1) + ("apply",)
    elif kind == "grpo":
      names = (features + ("generate_prefill", "generate_decode")
               + ("old_logprobs",) * c.recompute_old_logprobs
               + ("ref_logprobs",) * (c.objective.kl_coef != 0) + ("accumulate",)
               + ("accumulate_next",) * (c.global_batch > c.micro_batch) + ("apply",))
    elif kind == "dpo":
      micro = math.ceil(c.data.batch_size * hosts * c.pairs_per_row / c.micro_batch)
      names = (features + ("ref_logprobs", "accumulate")
               + ("accumulate_next",) * (micro > 1) + ("apply",))
    elif kind in ("eval", "benchmark"):
      names = ("generate_prefill", "generate_decode")
      if kind == "benchmark" and (c.judge.from_stage or c.judge.checkpoint):
        names += judge
    elif kind in ("verifier", "judge_eval"):
      names = judge if (c.judge.from_stage or c.judge.checkpoint) else ()
    else:
      raise AssertionError(f"no expectation for a {kind} stage")
    out += [(name, p) for p in names]
  return out


def test_topology_names():
  v5p = parse_topology("v5p-128")
  assert (v5p.chips, v5p.topology_name, v5p.hosts) == (64, "v5:4x4x4", 16)
  assert v5p.hbm_bytes == int(95.74 * GIB)
  assert parse_topology("v5p-8").topology_name == "v5:2x2x1"
  assert parse_topology("v5p-256").topology_name == "v5:4x4x8"
  assert parse_topology("v4-32").topology_name == "v4:2x2x4"
  assert parse_topology("v4-32").hbm_bytes == 32 * GIB
  v5e = parse_topology("v5e-256")
  assert (v5e.chips, v5e.topology_name, v5e.hbm_bytes) == (256, "v5e:16x16", 16 * GIB)
  assert parse_topology("v5e-1").chips_per_host_bounds == (1, 1, 1)
  assert parse_topology("v6e-64").topology_name == "v6e:8x8"
  for bad in ("v9-8", "v5p-7", "v5e-3", "tpu"):
    with pytest.raises(TopologyError, match="unknown TPU topology"):
      parse_topology(bad)


@needs_libtpu
def test_unknown_topology_is_a_one_line_error():
  result = run_tool(f"--config={TINY}", "--topology=v9x-8", timeout=300)
  assert result.returncode == 2
  lines = [line for line in result.stderr.splitlines() if "compile_check:" in line]
  assert len(lines) == 1 and "unknown TPU topology 'v9x-8'" in lines[0]
  assert "Traceback" not in result.stderr


@needs_libtpu
def test_a_program_that_does_not_fit_exits_nonzero():
  result = run_tool(f"--config={TINY}", "--topology=v5p-8", "--stages=eval_sft",
                    "--hbm_gib=0.001", *SMALL, timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  assert "does not fit in HBM: eval_sft/generate_prefill" in result.stderr


@needs_libtpu
def test_a_batch_too_big_for_a_v5e_chip_is_reported_not_raised():
  """XLA refuses to compile a program whose buffers exceed the chip's HBM: the row says how
  much it needs, the check goes on, and the command exits 1."""
  result = run_tool(f"--config={TINY}", "--topology=v5e-1", "--stages=eval_sft", *SMALL,
                    "--config.stages.eval_sft.rollout.num_samples=4096", timeout=600)
  assert result.returncode == 1, result.stderr[-3000:]
  rows = [line.split() for line in result.stdout.splitlines() if line.startswith("eval_sft")]
  assert [r[1] for r in rows] == ["generate_prefill", "generate_decode"]
  assert all(float(r[7]) > 16 and r[9] == "NO" for r in rows)     # total GiB, fits
  assert "does not fit in HBM: eval_sft/generate_prefill, eval_sft/generate_decode" in \
      result.stderr


@pytest.mark.slow
@needs_libtpu
def test_tiny_config_on_v5p_8_compiles_every_stage_program(tmp_path):
  from veripo_jax.config_utils import load_config_file
  out = tmp_path / "rows.json"
  result = run_tool(f"--config={TINY}", "--topology=v5p-8", f"--json={out}", *SMALL)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads(out.read_text())
  assert [(r["stage"], r["program"]) for r in rows] == expected_programs(load_config_file(TINY), 1)
  keys = {"stage", "program", "per_chip_bytes", "hbm_bytes", "fits", "compile_s", "flops"}
  for r in rows:
    assert set(r) == keys
    assert r["fits"] and r["hbm_bytes"] == int(95.74 * GIB)
    assert {"argument", "output", "temp", "code", "total"} <= set(r["per_chip_bytes"])
    assert 0 < r["per_chip_bytes"]["total"] <= r["hbm_bytes"]
    assert r["compile_s"] >= 0
  assert "all %d programs fit" % len(rows) in result.stdout


def test_an_abstract_learner_takes_the_real_learners_code_path():
  """A learner over `nnx.eval_shape`'s model: the same shardings, steps returning the shapes a
  real learner's steps return, and its jitted calls compile on the test mesh."""
  import jax
  import numpy as np
  from flax import nnx
  from veripo_jax.models.qwen2_5_vl.config import PRESETS
  from veripo_jax.models.qwen2_5_vl.model import Qwen25VL
  from veripo_jax.parallel.sharding import make_mesh
  from veripo_jax.rl.objectives import SFTObjective
  from veripo_jax.rl.sequences import build_sequences
  from veripo_jax.train.learner import Learner
  from veripo_jax.train.optimizer import OptimizerConfig

  config = PRESETS["tiny"].replace(vision=None)
  mesh = make_mesh(1, -1, 1)
  opt = OptimizerConfig(learning_rate=1e-3, warmup_ratio=0.0, schedule="constant")
  prompts = {"input_ids": np.full((8, 16), 5, np.int32), "attention_mask": np.ones((8, 16), bool),
             "next_position": np.full((8,), 16, np.int32)}
  seq = build_sequences(config, prompts, np.arange(8), np.full((8, 8), 7, np.int32),
                        np.full(8, 8))
  results = {}
  for name, make in (("real", lambda: Qwen25VL(config, rngs=nnx.Rngs(0))),
                     ("abstract", lambda: nnx.eval_shape(
                         lambda: Qwen25VL(config, rngs=nnx.Rngs(0))))):
    learner = Learner(make(), opt, mesh, frozen=())
    acc = learner.accumulate(SFTObjective(), learner.put_batch(seq))
    metrics = learner.apply(acc)
    results[name] = (learner, acc, metrics)
  real, abstract = results["real"][0], results["abstract"][0]
  assert abstract.abstract and not real.abstract
  shapes = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), tree)
  assert shapes(abstract.state) == shapes(real.state)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), results["abstract"][1]) == \
      jax.tree.map(lambda x: (x.shape, x.dtype), results["real"][1])
  assert set(results["abstract"][2]) | {"lr"} == set(results["real"][2])
  assert results["real"][2]["lr"] == 1e-3
  fn, args = abstract.accumulate_call(SFTObjective(), abstract.put_batch(seq))
  memory = fn.lower(*args).compile().memory_analysis()
  assert memory.argument_size_in_bytes > 0
