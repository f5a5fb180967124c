"""The judge server: JetStream engine + gRPC server + client against greedy `generate`."""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import portpicker
import psutil
import pytest
from flax import nnx

from veripo_jax.inference import generate
from veripo_jax.models.qwen2_5_vl import (Qwen25VL, get_preset, load_hf_checkpoint,
                                         save_hf_checkpoint)
from veripo_jax.serving import compat
from veripo_jax.serving.client import JudgeClient, JudgeError
from veripo_jax.serving.engine import QwenEngine
from veripo_jax.serving.server import start_server

STOP = 1                                    # the tiny preset's EOS
ENGINE = dict(max_concurrent_decodes=4, max_prefill_length=32, max_decode_length=16,
              stop_token_ids=(STOP,))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp("judge") / "ckpt"
  save_hf_checkpoint(Qwen25VL(get_preset("tiny"), rngs=nnx.Rngs(3)), path)
  return path


@pytest.fixture(scope="module")
def model(checkpoint):
  return load_hf_checkpoint(checkpoint)


@pytest.fixture(scope="module")
def engine(model):
  return QwenEngine(model, **ENGINE)


@pytest.fixture(scope="module")
def server(engine):
  srv = start_server(engine, portpicker.pick_unused_port())
  try:
    yield srv
  finally:
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
  with JudgeClient(server.address, timeout_s=120, retries=1, max_workers=8) as c:
    yield c


def prompts(n: int, seed: int = 0) -> list[list[int]]:
  rng = np.random.RandomState(seed)           # ids clear of EOS/pad (0, 1) and vision ids (>= 249)
  return [rng.randint(2, 249, size=rng.randint(2, 31)).tolist() for _ in range(n)]


def greedy(model, rows: list[list[int]], max_new_tokens: int) -> list[list[int]]:
  """`generate` on the left-padded batch, cut before the stop token as the server does."""
  width = max(map(len, rows))
  ids = np.array([[0] * (width - len(r)) + r for r in rows], np.int32)
  mask = np.array([[0] * (width - len(r)) + [1] * len(r) for r in rows], np.int32)
  out = generate(model, {"input_ids": ids, "attention_mask": mask}, max_new_tokens,
                 temperature=0.0, eos_token_ids=(STOP,), pad_token_id=0)
  result = []
  for toks, n in zip(np.asarray(out.tokens), np.asarray(out.lengths)):
    toks = toks[:n].tolist()
    result.append(toks[:-1] if toks and toks[-1] == STOP else toks)
  return result


def _loopback(ip: str) -> bool:
  addr = ipaddress.ip_address(ip)               # gRPC may listen on the v4-mapped ::ffff:127.0.0.1
  return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback


def test_concurrent_requests_match_greedy_generate(model, client):
  rows = prompts(10)                          # 10 requests on 4 slots: slots are reused
  got = client.generate_many(rows, 10)
  assert got == greedy(model, rows, 10)
  assert sum(len(g) for g in got) > 50        # not trivially short
  assert client.num_failures == 0 and client.num_retries == 0


def test_request_ends_when_its_cache_row_is_full(model, client):
  """Bucket 16 + 16 decode slots hold 33 tokens' logits; longer requests end there, correct."""
  row = prompts(1, seed=5)[0][:5]
  got = client.generate_ids(row, 100)
  want = greedy(model, [row], 40)[0]
  assert got == want[:33] and len(want) > 33


def test_health_loopback_and_bad_requests(engine, server, client):
  assert client.healthy()
  assert server.host == "127.0.0.1"
  listening = {c.laddr.ip for c in psutil.Process().net_connections(kind="tcp")
               if c.status == psutil.CONN_LISTEN and c.laddr.port == server.port}
  assert listening and all(_loopback(ip) for ip in listening), listening
  with pytest.raises(RuntimeError, match="bind"):     # a busy port fails, it is not shared
    start_server(engine, server.port)
  failures = client.num_failures
  assert client.generate_many([[], [300, 2], [5, get_preset("tiny").image_token_id]], 3) == \
      [None] * 3                              # refused up front: not retried, server lives on
  with pytest.raises(JudgeError, match="INVALID_ARGUMENT"):
    client.generate_ids([2, 3], 0)
  assert client.num_failures == failures + 4 and client.num_retries == 0
  assert client.healthy()


def test_engine_api_directly_with_sampling(model):
  """The orchestrator's sequence by hand: prefill, insert, free the prefix, generate."""
  eng = QwenEngine(model, **{**ENGINE, "temperature": 1.0, "top_p": 0.9})
  params = eng.load_params()
  state = eng.init_decode_state()
  prefix = eng.prefill(params=params, padded_tokens=np.array([-1, 5, 6, 7] + [0] * 12),
                       true_length=4)
  state = eng.insert(prefix, state, slot=2)
  jax.tree.map(lambda a: a.delete(), prefix)  # what the orchestrator does after insert
  tokens = []
  for _ in range(5):
    state, result = eng.generate(params, state)
    slot = result.convert_to_numpy().get_result_at_slot(2)
    assert slot.valid[0, 0] == 1
    tokens.append(int(slot.tokens[0, 0]))
  assert slot.lengths[0] == 5 and all(0 <= t < get_preset("tiny").text.vocab_size for t in tokens)
  assert eng.max_prefill_length == 32 and eng.samples_per_slot == 1
  with pytest.raises(ValueError, match="power of two"):
    QwenEngine(model, max_prefill_length=100)


def test_stopped_server_gives_none_within_timeout(engine):
  srv = start_server(engine, portpicker.pick_unused_port())
  with JudgeClient(srv.address, timeout_s=5, retries=1, backoff_s=0.05) as c:
    try:
      assert c.healthy()
    finally:
      srv.stop()
    start = time.monotonic()
    assert c.generate_many([[2, 3, 4]], 4) == [None]
    assert time.monotonic() - start < 2 * 5 + 1
    assert (c.num_requests, c.num_retries, c.num_failures) == (1, 1, 1)
    assert not c.healthy()


class FailingEngine(QwenEngine):
  """Its decode step raises: JetStream's generate thread fails."""

  def generate(self, params, decode_state):
    raise RuntimeError("injected decode failure")


def test_engine_thread_failure_does_not_kill_the_process(model):
  """JetStream 0.2.2 SIGKILLs its process when a driver thread fails; the judge server lives in
  the trainer, so a failure must instead end in refused requests (and a failed health check)."""
  srv = start_server(FailingEngine(model, **ENGINE), portpicker.pick_unused_port())
  try:
    with JudgeClient(srv.address, timeout_s=5, retries=1, backoff_s=0.05) as c:
      assert c.generate_many([[2, 3, 4]], 4) == [None]   # the request that hits the failure
      start = time.monotonic()
      assert c.generate_many([[5, 6], [7, 8]], 4) == [None, None]
      assert time.monotonic() - start < 2                # refused at once, not timed out
      assert not c.healthy()
  finally:
    srv.stop()


@pytest.mark.slow
def test_cli_serves_and_exits_on_sigterm(checkpoint):
  port = portpicker.pick_unused_port()
  proc = subprocess.Popen(
      [sys.executable, "-m", "veripo_jax.serving.server", f"--checkpoint={checkpoint}",
       f"--port={port}", "--max_concurrent_decodes=2", "--max_prefill_length=16",
       "--max_decode_length=8"],
      env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)
  try:
    with JudgeClient(f"127.0.0.1:{port}", timeout_s=60, retries=0) as c:
      deadline = time.monotonic() + 120
      while not c.healthy():
        assert proc.poll() is None and time.monotonic() < deadline, "server did not come up"
        time.sleep(0.5)
      assert len(c.generate_ids([2, 3, 4], 3)) == 3
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "judge serving on 127.0.0.1" in output
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate(timeout=30)


def test_a_driver_thread_survives_the_slot_race_and_keeps_any_other_error():
  """JetStream 0.2.2's generate thread asserts a slot is busy after looking for work, which
  fails when the last busy slots free up in between: its loop starts again. Any other failure
  is kept for `failed_thread`, as before."""
  calls = []

  def racing_loop():
    calls.append(len(calls))
    if len(calls) < 3:
      raise AssertionError(compat._SLOTS_RACE)

  thread = threading.Thread(target=racing_loop, name="generate-0")
  compat._run_and_keep_error(thread)
  assert (calls, thread.restarts, thread.error) == ([0, 1, 2], 2, None)

  def broken_loop():
    raise AssertionError("another invariant")

  thread = threading.Thread(target=broken_loop, name="generate-0")
  compat._run_and_keep_error(thread)
  assert isinstance(thread.error, AssertionError) and thread.restarts == 0
