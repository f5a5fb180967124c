"""Every google-jetstream 0.2.2 compatibility fix, in one place.

JetStream's engine and orchestrator are imported only through `jetstream()`: the import pulls
seqio -> TensorFlow (seconds), so nothing outside the server should pay for it, and it has side
effects to undo. (The generated gRPC protos are light; the client imports them directly.)
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import types

import jax

_log = logging.getLogger(__name__)


@functools.cache
def jetstream() -> types.SimpleNamespace:
  """The JetStream modules the server needs, imported once with the fixes applied.

  - `jax.tree_map` (removed from current jax) is what the orchestrator calls to free prefixes;
    without it the first request kills the process.
  - Importing the orchestrator sets the root logger to DEBUG and adds a stdout handler
    (hundreds of lines per request): both are restored.
  - A failing driver thread (`JetThread`) SIGKILLs the whole process, which would take the
    trainer serving the judge down with it: the thread now logs, keeps the exception in
    `thread.error` and ends; the server reports itself failed (see `failed_thread`).
  - The generate thread's one known race is survived (`_run_and_keep_error`).
  """
  if not hasattr(jax, "tree_map"):
    jax.tree_map = jax.tree.map
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  root = logging.getLogger()
  level, handlers = root.level, list(root.handlers)
  try:
    from jetstream.core import orchestrator
    from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc
    from jetstream.engine import engine_api, tokenizer_api, tokenizer_pb2
  finally:
    root.setLevel(level)
    for handler in root.handlers[:]:
      if handler not in handlers:
        root.removeHandler(handler)
  orchestrator.JetThread.run = _run_and_keep_error
  return types.SimpleNamespace(
      engine_api=engine_api, tokenizer_api=tokenizer_api, tokenizer_pb2=tokenizer_pb2,
      orchestrator=orchestrator, jetstream_pb2=jetstream_pb2,
      jetstream_pb2_grpc=jetstream_pb2_grpc)


# The generate thread checks that a decode slot is in use after looking for work; when the
# detokenize thread frees the last busy slots in between (the load drains to zero), the check
# fails. Seen in a full tiny run: the judge then refused the rest of an evaluation's requests.
_SLOTS_RACE = "At this point we must have some requests inserted into the slots."


def _run_and_keep_error(thread: threading.Thread) -> None:
  """A driver thread's loop; on the slot race its loop starts again (every slot is free then,
  so no request is dropped: prefilled ones wait in the generate backlog), and
  `thread.restarts` counts it."""
  thread.error, thread.restarts = None, 0
  target, args, kwargs = thread._target, thread._args, thread._kwargs   # noqa: SLF001
  try:
    while True:
      try:
        target(*args, **kwargs)
        return
      except AssertionError as e:
        if str(e) != _SLOTS_RACE:
          raise
        thread.restarts += 1
        _log.info("JetStream thread %s: every decode slot came free during its check; "
                  "its loop starts again (%d)", thread.name, thread.restarts)
  except Exception as e:  # noqa: BLE001 (any failure: keep it, never kill the process)
    thread.error = e
    _log.exception("JetStream thread %s failed; the judge server now refuses requests",
                   thread.name)


def failed_thread(driver) -> threading.Thread | None:
  """A driver thread that ended with an exception, if any."""
  return next((t for t in driver._all_threads if getattr(t, "error", None)), None)  # noqa: SLF001


def check_max_prefill_length(n: int) -> int:
  """JetStream's `pad_tokens` pads to powers of two from 16 and accepts only one of them in
  [16, 32768] as the maximum: anything else crashes the prefill thread, so refuse it up front."""
  if n not in [2 ** i for i in range(4, 16)]:
    raise ValueError(f"max_prefill_length must be a power of two in [16, 32768], got {n}")
  return n
