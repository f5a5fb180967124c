"""Metrics: JSON lines in `WORKDIR/metrics.jsonl` plus TensorBoard scalars, and progress output.

One record per (stage, step): `{"stage": ..., "step": ..., "time": <unix time>, <name>: value}`.
Every line is valid JSON on its own: NaN and infinities become null (TensorBoard still gets the
float). Each line is flushed, so a crash loses at most the line being written; a resumed run calls
`rewind` to drop the records past its checkpoint, which it is about to write again.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import jax
import numpy as np
from absl import logging

from veripo_jax.fileio import drop_partial_last_line, write_text_atomic

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED = ("stage", "step", "time")

T = TypeVar("T")


class MetricsWriter:
  """Appends metric records for one run directory; only process 0 writes by default.

  TensorBoard events go to `WORKDIR/tensorboard/<stage>/`, one run per stage, created on the
  stage's first write (tensorboardX is imported then: it pulls in torch when installed, ~1 s).
  """

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True,
               enabled: bool | None = None):
    self.workdir = os.fspath(workdir)
    self.path = os.path.join(self.workdir, METRICS_FILE)
    self.tensorboard = tensorboard
    self.enabled = (jax.process_index() == 0) if enabled is None else bool(enabled)
    self._file = None
    self._tb: dict[str, Any] = {}
    self._purge_step: dict[str, int] = {}

  def write(self, stage: str, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends one record; values are Python, numpy or jax scalars (ints stay ints)."""
    if not self.enabled:
      return
    _check_stage(stage)
    now = time.time()
    values = {}
    for name, value in metrics.items():
      if name in _RESERVED:
        raise ValueError(f"metric name {name!r} is reserved (record fields: {_RESERVED})")
      values[str(name)] = _scalar(name, value)
    record = {"stage": stage, "step": int(step), "time": now}
    record.update(null_nonfinite(values))
    f = self._open()
    f.write(json.dumps(record, allow_nan=False) + "\n")
    f.flush()
    if self.tensorboard and values:
      tb = self._writer(stage)
      for name, value in values.items():
        tb.add_scalar(name, float(value), global_step=int(step), walltime=now)
      tb.flush()

  def rewind(self, stage: str, step: int) -> int:
    """Drops `stage`'s records with step > `step` (atomic rewrite); returns how many.

    TensorBoard: the stage's next event file starts with a purge at `step + 1`, so TensorBoard
    hides the superseded points of the earlier run.
    """
    if not self.enabled:
      return 0
    _check_stage(stage)
    self._close_file()
    self._purge_step[stage] = int(step) + 1
    tb = self._tb.pop(stage, None)
    if tb is not None:
      tb.close()
    if not os.path.exists(self.path):
      return 0
    kept, dropped = [], 0
    with open(self.path) as f:
      for lineno, line in enumerate(f, 1):
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          logging.warning("%s:%d: dropping a line that is not valid JSON", self.path, lineno)
          dropped += 1
          continue
        if record.get("stage") == stage and record.get("step", -1) > step:
          dropped += 1
          continue
        kept.append(line if line.endswith("\n") else line + "\n")
    if dropped:
      write_text_atomic(self.path, "".join(kept))
    return dropped

  def close(self) -> None:
    self._close_file()
    for tb in self._tb.values():
      tb.close()
    self._tb.clear()

  def __enter__(self) -> MetricsWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # -----------------------------------------------------------------------------------------------

  def _open(self):
    if self._file is None:
      os.makedirs(self.workdir, exist_ok=True)
      drop_partial_last_line(self.path)
      self._file = open(self.path, "a")
    return self._file

  def _close_file(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def _writer(self, stage: str):
    if stage not in self._tb:
      from tensorboardX import SummaryWriter  # slow import (torch), only when needed
      # tensorboardX names event files by the second and opens them with "wb": a second writer
      # in the same second (a quick resume) would wipe the first file without a unique suffix.
      # TensorBoard reads a run's files in name order, so the suffix also keeps them ordered.
      self._tb[stage] = SummaryWriter(os.path.join(self.workdir, TENSORBOARD_DIR, stage),
                                      purge_step=self._purge_step.pop(stage, None),
                                      filename_suffix=f".{time.time_ns()}")
    return self._tb[stage]


def null_nonfinite(values: Mapping[str, Any]) -> dict[str, Any]:
  """The values with NaN and infinities as None, so they are valid JSON (null)."""
  return {k: None if isinstance(v, float) and not math.isfinite(v) else v
          for k, v in values.items()}


def read_metrics(workdir_or_path: str | os.PathLike, stage: str | None = None) -> list[dict]:
  """The records of a run (a workdir or a metrics.jsonl path), optionally of one stage.

  A missing file gives []. A bad last line (a crash mid-write) is skipped with a warning; a bad
  line elsewhere is an error naming the file and line.
  """
  path = os.fspath(workdir_or_path)
  if os.path.isdir(path):
    path = os.path.join(path, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.readlines()
  records = []
  for lineno, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if lineno == len(lines):
        logging.warning("%s:%d: skipping a partial last line", path, lineno)
        continue
      raise ValueError(f"{path}:{lineno}: not valid JSON: {e}") from e
    if stage is None or record.get("stage") == stage:
      records.append(record)
  return records


def progress(iterable: Iterable[T], *, total: int | None = None, desc: str = "",
             log_every_s: float = 30.0, unit: str = "it",
             size: Callable[[T], int] | None = None) -> Iterator[T]:
  """Yields `iterable`'s elements, showing progress: a tqdm bar when stderr is a terminal, else
  an absl log line ("desc: 12/64 (19%) 3.1 it/s, ETA 17 s") at most every `log_every_s` seconds
  and one at the end. With `size`, an element counts `size(element)` units (a batch of items:
  `total` and the rate are then in items). Only process 0 shows anything."""
  if total is None and size is None:
    try:
      total = len(iterable)  # type: ignore[arg-type]
    except TypeError:
      total = None
  if _process_index() != 0:
    yield from iterable
    return
  count = size or (lambda element: 1)
  if sys.stderr.isatty():
    import tqdm
    with tqdm.tqdm(total=total, desc=desc or None, unit=unit, dynamic_ncols=True) as bar:
      for element in iterable:
        yield element
        bar.update(count(element))
    return
  start = last = time.monotonic()
  n = 0
  for element in iterable:
    yield element
    n += count(element)
    now = time.monotonic()
    if now - last >= log_every_s:
      logging.info("%s", _progress_line(desc, n, total, now - start, unit))
      last = now
  elapsed = time.monotonic() - start
  logging.info("%s, done in %.1f s", _progress_line(desc, n, total, elapsed, unit), elapsed)


# -------------------------------------------------------------------------------------------------

def _progress_line(desc: str, n: int, total: int | None, elapsed: float, unit: str = "it"
                   ) -> str:
  rate = n / elapsed if elapsed > 0 else 0.0
  count = f"{n}/{total} ({100 * n // total}%)" if total else f"{n}"
  eta = f", ETA {(total - n) / rate:.0f} s" if total and rate and n < total else ""
  return f"{desc + ': ' if desc else ''}{count} {rate:.3g} {unit}/s{eta}"


def _process_index() -> int:
  """jax.process_index() without starting a backend just to learn it: a data build may never
  touch a device, and a backend started before `jax.distributed.initialize` breaks that call.
  Before either, this is a single process."""
  if jax.distributed.is_initialized():
    return jax.process_index()
  try:
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
      return jax.process_index()
  except (ImportError, AttributeError):
    pass
  return 0


def _check_stage(stage: str) -> None:
  if not isinstance(stage, str) or not stage or stage in (".", "..") or "/" in stage or (
      os.sep in stage):
    raise ValueError(f"stage must be a non-empty name without path separators, got {stage!r}")


def _scalar(name: str, value: Any) -> bool | int | float:
  """A Python bool/int/float from a Python, numpy or jax scalar (or 1-element array)."""
  if isinstance(value, bool | int | float):
    return value
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    if not value.is_fully_replicated:
      raise ValueError(f"metric {name!r} is a sharded global array; reduce it to a scalar first")
    value = value.addressable_data(0)
  try:
    arr = np.asarray(value)
  except Exception as e:  # noqa: BLE001 - any unconvertible object gets the same clear error
    raise TypeError(f"metric {name!r}: cannot convert {type(value).__name__} to a number") from e
  if arr.size != 1:
    raise ValueError(f"metric {name!r} must be a scalar, got shape {arr.shape}")
  if arr.dtype.kind == "b":
    return bool(arr.item())
  if arr.dtype.kind in "iu":
    return int(arr.item())
  if arr.dtype.kind == "f":
    return float(arr.item())
  raise TypeError(f"metric {name!r} must be a number, got dtype {arr.dtype}")
