"""Train infrastructure: orbax checkpoints across meshes, metrics.jsonl + TensorBoard, progress
lines, and the SIGTERM guard."""

import glob
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P, SingleDeviceSharding

from veripo_jax.parallel.sharding import make_mesh
from veripo_jax.train.checkpointing import Checkpointer, abstract_like, data_to_key, key_to_data
from veripo_jax.train.compile_cache import resolve_cache_dir
from veripo_jax.train.metrics import MetricsWriter, progress, read_metrics
from veripo_jax.train.preemption import PreemptionGuard


class Tiny(nnx.Module):
  def __init__(self, rngs):
    self.up = nnx.Linear(16, 32, rngs=rngs)
    self.norm = nnx.BatchNorm(32, rngs=rngs)
    self.drop = nnx.Dropout(0.1, rngs=rngs)  # an RngKey (typed key) and an RngCount in the state

  def __call__(self, x):
    return self.drop(self.norm(self.up(x)))


def spec_for(x):
  if x.ndim == 2:
    return P("fsdp", "tensor")
  if x.ndim == 1 and x.shape[0] % 8 == 0:
    return P(("fsdp", "tensor"))
  return P()


def place(tree, mesh):
  return jax.tree.map(lambda x: jax.device_put(x, NamedSharding(mesh, spec_for(x))), tree)


def train_state(mesh):
  """{model: nnx.State, opt: adamw state after one update, rng: a typed key} on `mesh`."""
  model = Tiny(nnx.Rngs(params=0, dropout=1))
  model.train()
  model(jnp.ones((4, 16)))  # moves the batch stats and the dropout count off their init values
  params = nnx.state(model, nnx.Param)
  tx = optax.adamw(1e-3)
  opt = tx.init(params)
  grads = jax.tree.map(lambda p: 0.1 * p + 0.01, params)
  _, opt = tx.update(grads, opt, params)
  tree = {"model": nnx.state(model), "opt": opt, "rng": jax.random.key(7)}
  return place(tree, mesh)


def assert_bit_exact(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert a.dtype == b.dtype and a.shape == b.shape
    if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
      a, b = key_to_data(a), key_to_data(b)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def on(sharding_fn, tree):
  """A restore target: `tree`'s shapes and dtypes with the shardings `sharding_fn` gives."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x)),
                      abstract_like(tree))


def test_checkpoint_restores_across_meshes(tmp_path):
  state = train_state(make_mesh(data=1, fsdp=4, tensor=2))
  kernel = state["model"]["up"]["kernel"].get_value()
  assert kernel.sharding.spec == P("fsdp", "tensor")
  assert isinstance(state["model"], nnx.State)
  extras = {"data": {"iter": [1, 2, 3], "name": "grpo"}, "stage": 2, "lr": 5e-7}
  with Checkpointer(tmp_path / "ckpt") as ckpt:
    start = time.perf_counter()
    assert ckpt.save(10, state, extras)
    returned_s = time.perf_counter() - start
    ckpt.wait()
    assert ckpt.latest_step() == 10 and ckpt.all_steps() == [10]
    assert returned_s < 5.0  # async: returns after the host copy

    one = SingleDeviceSharding(jax.devices()[0])
    restored, got_extras = ckpt.restore(None, on(lambda x: one, state))
    assert isinstance(restored["model"], nnx.State)
    assert_bit_exact(restored, state)
    assert got_extras == extras
    assert all(x.sharding == one for x in jax.tree.leaves(restored))

    mesh24 = make_mesh(data=1, fsdp=2, tensor=4)
    restored, _ = ckpt.restore(10, on(lambda x: NamedSharding(mesh24, spec_for(x)), state))
    assert_bit_exact(restored, state)
    k24 = restored["model"]["up"]["kernel"].get_value()
    assert k24.sharding.mesh.shape == mesh24.shape and k24.sharding.spec == P("fsdp", "tensor")
    assert jax.dtypes.issubdtype(restored["rng"].dtype, jax.dtypes.prng_key)

    # The restored state plugs back into a module.
    model = Tiny(nnx.Rngs(params=5, dropout=6))
    nnx.update(model, restored["model"])
    np.testing.assert_array_equal(np.asarray(model.up.kernel.get_value()), np.asarray(kernel))


def test_save_then_donate_keep_last_and_intervals(tmp_path):
  mesh = make_mesh(data=1, fsdp=4, tensor=2)
  with Checkpointer(tmp_path / "ckpt", keep=2) as ckpt:
    for step in range(1, 6):
      x = jax.device_put(jnp.full((8, 4), float(step)), NamedSharding(mesh, P("fsdp", "tensor")))
      assert ckpt.save(step, {"x": x}, {"step": step})
      x.delete()  # as a donated buffer would be: the async save has its host copy already
    ckpt.wait()
    assert ckpt.all_steps() == [4, 5]
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["4", "5"]
    target = {"x": jax.ShapeDtypeStruct((8, 4), jnp.float32,
                                        sharding=NamedSharding(mesh, P("fsdp", "tensor")))}
    state, extras = ckpt.restore(4, target)
    np.testing.assert_array_equal(np.asarray(state["x"]), np.full((8, 4), 4.0))
    assert extras == {"step": 4}
    with pytest.raises(FileNotFoundError, match="step 2"):
      ckpt.restore(2, target)
    with pytest.raises(ValueError, match="does not match"):
      ckpt.restore(5, {"y": target["x"]})

  y = {"y": jnp.arange(3)}
  with Checkpointer(tmp_path / "interval", save_interval_steps=2, async_save=False) as ckpt:
    assert [ckpt.save(s, y) for s in range(5)] == [True, False, True, False, True]
    assert ckpt.save(5, y, force=True)
    assert not ckpt.save(5, y, force=True)  # never overwrites an existing step
    assert ckpt.all_steps() == [2, 4, 5]  # keep=3
    with pytest.raises(TypeError, match="JSON"):
      ckpt.save(6, y, {"bad": object()})
    # A plain jax.eval_shape target (no shardings) restores onto the local device.
    state, _ = ckpt.restore(None, jax.eval_shape(lambda: y))
    np.testing.assert_array_equal(np.asarray(state["y"]), np.arange(3))


def test_restore_from_empty_dir(tmp_path):
  with Checkpointer(tmp_path / "none") as ckpt:
    assert ckpt.latest_step() is None and ckpt.all_steps() == []
    assert ckpt.restore(None, {"x": jax.ShapeDtypeStruct((2,), jnp.float32)}) is None


def test_key_helpers_round_trip():
  key = jax.random.key(3)
  data = key_to_data(key)
  assert data.dtype == jnp.uint32
  back = data_to_key(data)
  np.testing.assert_array_equal(np.asarray(key_to_data(back)), np.asarray(data))
  np.testing.assert_array_equal(jax.random.normal(back, (3,)), jax.random.normal(key, (3,)))


def _strict_json(line):
  def reject(name):
    raise AssertionError(f"non-standard JSON constant {name}")
  return json.loads(line, parse_constant=reject)


def test_metrics_jsonl_tensorboard_and_rewind(tmp_path):
  with MetricsWriter(tmp_path) as w:
    for step in range(1, 5):
      w.write("grpo", step, {"reward/mean": np.float32(step / 4),
                             "reward/accuracy": jnp.float32(0.5),
                             "verifier/pairs_long": np.int64(step), "bad/nan": float("nan"),
                             "bad/inf": np.float32(np.inf)})
    for step in range(1, 3):
      w.write("dpo", step, {"dpo/reward_accuracy": 0.75})
    with pytest.raises(ValueError, match="reserved"):
      w.write("grpo", 9, {"step": 1})
    with pytest.raises(ValueError, match="scalar"):
      w.write("grpo", 9, {"x": np.zeros(3)})

  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == 6
  records = [_strict_json(line) for line in lines]
  assert list(records[0])[:3] == ["stage", "step", "time"]
  first = records[0]
  assert first["stage"] == "grpo" and first["step"] == 1 and abs(first["time"] - time.time()) < 60
  assert first["reward/mean"] == 0.25 and first["reward/accuracy"] == 0.5
  assert first["verifier/pairs_long"] == 1 and isinstance(first["verifier/pairs_long"], int)
  assert first["bad/nan"] is None and first["bad/inf"] is None
  assert glob.glob(str(tmp_path / "tensorboard" / "grpo" / "events.out.tfevents.*"))
  assert glob.glob(str(tmp_path / "tensorboard" / "dpo" / "events.out.tfevents.*"))

  # Resume from a grpo checkpoint at step 2: grpo 3 and 4 go, dpo (steps 1-2) stays.
  with MetricsWriter(tmp_path) as w:
    assert w.rewind("grpo", 2) == 2
    assert [(r["stage"], r["step"]) for r in read_metrics(tmp_path)] == [
        ("grpo", 1), ("grpo", 2), ("dpo", 1), ("dpo", 2)]
    w.write("grpo", 3, {"reward/mean": 1.0})
  assert [r["step"] for r in read_metrics(tmp_path, stage="grpo")] == [1, 2, 3]
  assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl", stage="dpo")] == [1, 2]
  assert len(glob.glob(str(tmp_path / "tensorboard" / "grpo" / "events.out.tfevents.*"))) == 2

  # A crash mid-line leaves a partial last line: readers skip it, the next writer drops it.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"stage": "grpo", "st')
  assert len(read_metrics(tmp_path)) == 5
  with MetricsWriter(tmp_path, tensorboard=False) as w:
    w.write("grpo", 4, {"reward/mean": 1.0})
  assert [_strict_json(line)["step"] for line in
          (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 1, 2, 3, 4]


def test_metrics_disabled_writes_nothing(tmp_path):
  with MetricsWriter(tmp_path / "run", enabled=False) as w:
    w.write("grpo", 1, {"reward/mean": 1.0})
    assert w.rewind("grpo", 0) == 0
  assert not os.path.exists(tmp_path / "run")
  assert read_metrics(tmp_path / "run") == []


def test_progress_logs_lines_when_not_a_terminal(caplog):
  with caplog.at_level(logging.INFO):
    assert list(progress(range(5), desc="rollouts", log_every_s=0.0)) == list(range(5))
    assert list(progress(iter(range(3)), desc="build", log_every_s=3600)) == [0, 1, 2]
  messages = [r.getMessage() for r in caplog.records]
  rollouts = [m for m in messages if m.startswith("rollouts: ")]
  assert len(rollouts) == 6  # one per item (log_every_s=0) plus the final one
  assert rollouts[1].startswith("rollouts: 2/5 (40%) ") and "it/s" in rollouts[1]
  assert rollouts[-1].startswith("rollouts: 5/5 (100%) ") and "done in" in rollouts[-1]
  build = [m for m in messages if m.startswith("build: ")]
  assert len(build) == 1 and build[0].startswith("build: 3 ")  # no total known: a count
  assert "ETA" in rollouts[1] and "ETA" not in rollouts[-1]


def test_progress_counts_items_of_batches(caplog):
  batches = [[1, 2, 3], [4, 5], [6]]
  with caplog.at_level(logging.INFO):
    assert list(progress(batches, total=6, desc="eval", unit="item", size=len,
                         log_every_s=0.0)) == batches
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("eval: ")]
  assert [ln.split()[1] for ln in lines] == ["3/6", "5/6", "6/6", "6/6"]
  assert "item/s" in lines[0]


def _signal_stops_guard(sig, **kwargs):
  before = signal.getsignal(sig)
  with PreemptionGuard(**kwargs) as guard:
    assert guard.installed and not guard.should_stop()
    os.kill(os.getpid(), sig)
    for _ in range(200):
      if guard.should_stop():
        break
      time.sleep(0.005)
    assert guard.should_stop() and guard.signal == sig
  assert signal.getsignal(sig) is before
  assert guard.should_stop()  # stays stopped


def test_preemption_guard_sigterm():
  _signal_stops_guard(signal.SIGTERM)


def test_preemption_guard_sigint_request_and_threads():
  _signal_stops_guard(signal.SIGINT, sigint=True)

  guard = PreemptionGuard()
  assert not guard.should_stop()
  guard.request_stop()
  assert guard.should_stop() and guard.signal is None

  seen = {}

  def in_thread():
    with PreemptionGuard() as g:
      seen["installed"] = g.installed
      seen["stop"] = g.should_stop()
      g.request_stop()
      seen["after_request"] = g.should_stop()

  term_before = signal.getsignal(signal.SIGTERM)
  t = threading.Thread(target=in_thread)
  t.start()
  t.join()
  assert seen == {"installed": False, "stop": False, "after_request": True}
  assert signal.getsignal(signal.SIGTERM) is term_before


_CACHE_PROBE = """
import sys, jax, jax.numpy as jnp
from veripo_jax.train.compile_cache import enable_compilation_cache
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
print(enable_compilation_cache("", sys.argv[1]))
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
print(len(hits))
"""


def test_compilation_cache_is_written_then_hit(tmp_path):
  """A second process with the same workdir loads the first one's compiled program."""
  env = {**os.environ, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
         "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  runs = [subprocess.run([sys.executable, "-c", _CACHE_PROBE, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=300) for _ in range(2)]
  for r in runs:
    assert r.returncode == 0, r.stderr[-2000:]
  outputs = [r.stdout.split() for r in runs]
  cache_dir = str(tmp_path / "compilation_cache")
  assert outputs[0] == [cache_dir, "0"]                  # nothing to hit yet
  assert outputs[1][0] == cache_dir and int(outputs[1][1]) >= 1
  assert os.listdir(cache_dir)


def test_compilation_cache_settings():
  assert resolve_cache_dir("", "runs/x") == os.path.join("runs/x", "compilation_cache")
  assert resolve_cache_dir("off", "runs/x") is None
  assert resolve_cache_dir("gs://bucket/cache", "runs/x") == "gs://bucket/cache"
  assert resolve_cache_dir("rel/cache", "runs/x") == os.path.abspath("rel/cache")
