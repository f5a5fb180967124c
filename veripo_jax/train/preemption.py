"""Graceful stops: turn SIGTERM (a preempted TPU VM or spot GPU, `kill`) into a flag that the
train loop polls, so it can save a checkpoint at a step boundary and exit instead of dying
mid-write.

Multi-process agreement uses `multihost_utils.process_allgather` of the local flag rather than
Orbax's `reached_preemption`: the latter only sees preemptions announced through the JAX
coordination service (TPU maintenance events), not a plain SIGTERM sent to one host, and not
`request_stop`. The all-gather works on every backend (CPU/gloo included). It is a collective:
every process must call `should_stop()` at the same points of the loop (e.g. once per step).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import jax
import numpy as np
from absl import logging


class PreemptionGuard:
  """`with PreemptionGuard() as guard: ... if guard.should_stop(): save; break`.

  Catches SIGTERM, and SIGINT too with `sigint=True` (a second Ctrl-C then interrupts as usual).
  The previous handlers are restored on exit. Python only lets the main thread install signal
  handlers: entered from another thread the guard installs nothing (`installed` is False) and
  never triggers on signals; `request_stop()` still works.
  """

  def __init__(self, *, sigint: bool = False):
    self._signals = (signal.SIGTERM, signal.SIGINT) if sigint else (signal.SIGTERM,)
    self._previous: dict[int, object] = {}
    self._requested = False  # this process: a signal arrived or request_stop() was called
    self._agreed = False     # all processes have seen some process's request
    self.signal: int | None = None  # the first signal caught, if any
    self.installed = False

  def __enter__(self) -> PreemptionGuard:
    if threading.current_thread() is not threading.main_thread():
      logging.warning("PreemptionGuard entered off the main thread: signals will not be caught")
      return self
    for sig in self._signals:
      self._previous[sig] = signal.signal(sig, self._handle)
    self.installed = True
    return self

  def __exit__(self, *exc) -> None:
    for sig, previous in self._previous.items():
      # None: the previous handler was not installed from Python; the default is the best guess.
      signal.signal(sig, signal.SIG_DFL if previous is None else previous)
    self._previous.clear()
    self.installed = False

  def request_stop(self) -> None:
    """Asks for a stop as a signal would (tests, a time budget, programmatic stops)."""
    self._requested = True

  def should_stop(self) -> bool:
    """True once this process, or with several processes any process, asked to stop; the
    answer is the same on all processes at the same call. Once True it stays True."""
    if self._agreed:
      return True
    stop = self._requested
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      flags = multihost_utils.process_allgather(np.asarray(stop, np.int32))
      stop = bool(np.any(flags))
    if stop:
      if self.signal is not None:
        why = signal.Signals(self.signal).name
      else:
        why = "request_stop" if self._requested else "another process"
      logging.warning("stop requested (%s): stopping at the next step boundary", why)
      self._agreed = True
    return stop

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    if signum == signal.SIGINT and self.signal == signal.SIGINT:
      previous = self._previous.get(signal.SIGINT)
      if callable(previous):
        previous(signum, frame)
        return
      if previous != signal.SIG_IGN:
        raise KeyboardInterrupt
      return
    self._requested = True
    if self.signal is None:
      self.signal = signum
