"""Real multi-host GRPO: two JAX processes (gloo CPU collectives, 2 devices each, one shared
workdir as on a pod) run `main.run` on configs/tiny.py and match one 4-device process.

Same global batch: every host shuffles the same index order and reads `[index::2]`, and the
loader interleaves the hosts' examples (h0[0], h1[0], h0[1], ...), which is exactly the order a
single process reading 2x the prompts per batch sees; rollouts (one sampling key per batch) and
the update plan (groups by row) then match row for row.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest
from safetensors.numpy import load_file

from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.synthetic.world import WorldConfig
from veripo_jax.train.metrics import read_metrics

pytestmark = pytest.mark.slow

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER = os.path.join(HERE, "multihost_worker.py")
RESULT = "MULTIHOST_RESULT"     # multihost_worker.RESULT
TIMEOUT_S = 240          # per run; a hung collective must fail the test, not hang it
# LLVM -O0 for XLA:CPU: compiling is most of each run's time; every run uses the same flags.
XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count="
LOSS_KEYS = ("grpo/loss", "grpo/grad_norm", "grpo/entropy", "grpo/ratio_mean",
             "grpo/policy_shift_kl", "grpo/loss_weight")


def _start(log, workdir, world, batch_size, devices, *extra):
  """Starts one worker; stdout and stderr go to files (a full pipe would block it)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"{XLA_FLAGS}{devices}",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  cmd = [sys.executable, WORKER, f"--workdir={workdir}", f"--dataset_dir={world.dataset_dir}",
         f"--tokenizer_dir={world.tokenizer_dir}", f"--batch_size={batch_size}", *extra]
  with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
  proc.log = log
  return proc


def _finish(procs):
  """Waits for every process; a failure or the timeout kills the rest (a peer of a crashed
  process would wait in a collective). Returns each process's last stdout line as JSON."""
  deadline = time.monotonic() + TIMEOUT_S
  while True:
    codes = [p.poll() for _, p in procs]
    if None not in codes:
      break
    if any(c not in (None, 0) for c in codes) or time.monotonic() > deadline:
      for _, p in procs:
        if p.poll() is None:
          p.kill()
      break
    time.sleep(0.2)
  outputs = [(name, p.wait(), _read(f"{p.log}.out"), _read(f"{p.log}.err")) for name, p in procs]
  errors = [f"=== {name}: exit {rc}\n--- stdout ---\n{out[-2000:]}\n--- stderr ---\n{err[-6000:]}"
            for name, rc, out, err in outputs if rc != 0]
  if errors:
    pytest.fail(f"runs failed or timed out ({TIMEOUT_S} s)\n" + "\n".join(errors))
  results = {}
  for name, _, out, _ in outputs:
    lines = [l for l in out.splitlines() if l.startswith(RESULT)]
    assert lines, f"{name} printed no result line:\n{out[-2000:]}"
    results[name] = json.loads(lines[-1][len(RESULT):])
  return results


def _read(path):
  with open(path, encoding="utf-8", errors="replace") as f:
    return f.read()


def _rollouts(workdir, round_index):
  path = os.path.join(workdir, "stages", "grpo", "rollouts", f"round_{round_index:05d}.jsonl")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_two_processes_match_one(tmp_path):
  world = build_world(tmp_path / "world", seed=0, split_sizes={"train": 32, "heldout": 4},
                      world=WorldConfig(tokenizer_corpus_examples=200, tokenizer_vocab_size=600))
  multi, single = str(tmp_path / "multi"), str(tmp_path / "single")
  port = portpicker.pick_unused_port()
  coord = [f"--coordinator=127.0.0.1:{port}", "--num_processes=2"]
  logs = tmp_path / "logs"
  logs.mkdir()
  # 2 prompts per host = 4 global; 4 responses per micro-batch: rows split over both hosts.
  sizes = ["--global_batch=4", "--micro_batch=4"]
  procs = [(f"process {i}", _start(logs / f"process{i}", multi, world, 2, 2, *coord, *sizes,
                                   f"--process_id={i}")) for i in range(2)]
  procs.append(("1-process reference", _start(logs / "single", single, world, 4, 4, *sizes)))
  try:
    results = _finish(procs)
  finally:
    for _, p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()

  for i in range(2):
    r = results[f"process {i}"]
    assert (r["process"], r["processes"], r["devices"]) == (i, 2, 4)
  assert (results["1-process reference"]["processes"],
          results["1-process reference"]["devices"]) == (1, 4)

  # Metrics: process 0 alone wrote them (no duplicate records), the same steps as the reference.
  got, want = read_metrics(multi, "grpo"), read_metrics(single, "grpo")
  steps = [r for r in got if "grpo/loss" in r]
  assert [r["step"] for r in steps] == [1, 2, 3, 4]     # 2 rounds x 2 steps (1 group each)
  assert [r["step"] for r in got] == [r["step"] for r in want]
  assert any(abs(r["grpo/loss"]) > 1e-3 for r in steps)  # the comparison is not 0 == 0
  for a, b in zip(got, want):
    for key in LOSS_KEYS:
      if key in b:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5,
                                   err_msg=f"step {b['step']} {key}")
    for key in [k for k in b if k.startswith("reward/")]:
      assert a[key] == b[key], (b["step"], key)

  # Rollouts of every round: same prompts, tokens and rewards; log-probs to float tolerance.
  for r in range(2):
    a, b = _rollouts(multi, r), _rollouts(single, r)
    assert [x["prompt_id"] for x in a] == [x["prompt_id"] for x in b]
    assert len({x["prompt_id"] for x in a}) == 4
    assert [x["tokens"] for x in a] == [x["tokens"] for x in b], f"round {r}"
    assert [x["rewards"] for x in a] == [x["rewards"] for x in b], f"round {r}"
    assert len({x["rewards"]["total"] for x in a}) > 1     # non-zero advantages
    np.testing.assert_allclose([x["advantage"] for x in a], [x["advantage"] for x in b],
                               atol=1e-5)
    for x, y in zip(a, b):
      np.testing.assert_allclose(x["logprobs"], y["logprobs"], atol=1e-5)

  # Both processes saw the same run; the exported policies (gathered from 2 hosts) agree.
  s0, s1 = (results[f"process {i}"]["summaries"]["grpo"] for i in range(2))
  assert s0["steps"] == s1["steps"] == 4
  assert s0["last_round"]["reward/mean"] == s1["last_round"]["reward/mean"]
  pa, pb = (load_file(os.path.join(d, "stages", "grpo", "policy", "model.safetensors"))
            for d in (multi, single))
  assert pa.keys() == pb.keys()
  for k in pb:
    np.testing.assert_allclose(pa[k], pb[k], atol=1e-5, err_msg=k)
  ckpt = os.path.join(multi, "stages", "grpo", "checkpoints")
  assert sorted(os.listdir(ckpt)) == ["2", "4"]
  assert os.path.exists(os.path.join(multi, "stages", "grpo", "done.json"))
