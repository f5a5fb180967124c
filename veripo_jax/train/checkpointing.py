"""Train-state checkpoints: a thin wrapper over `orbax.checkpoint.CheckpointManager`.

Each step directory holds two items: "state" (any pytree of jax arrays: NNX states, optax states,
PRNG keys, sharded on any mesh) and "extras" (a JSON dict: the Grain iterator state, the stage
position, counters). Extras are kept per process, like Grain's own Orbax handler: with data sharded
by process each host's iterator state differs, and Orbax's JsonSave would keep only the primary's
(every host would then resume the primary's data shard). Orbax writes a step under a temporary
name and renames it when complete, so a crash never leaves a half-written checkpoint that a
resume would pick up.

Restoring needs a target whose leaves carry shardings (`abstract_like`, or `jax.eval_shape` plus
shardings): the arrays then land directly on the target's devices, so a state saved on a (4, 2)
mesh restores onto 1 device or a (2, 4) mesh. Without shardings Orbax would try the saved
topology and fail with "Topology mismatch".

Multi-host: every process calls `save` / `restore` with the same step (they are collective);
each process writes its own shards and only the primary writes metadata, all through Orbax.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

STATE = "state"
EXTRAS = "extras"


def abstract_like(tree: Any) -> Any:
  """ShapeDtypeStructs carrying the arrays' shardings: a restore target that puts every leaf
  back where it lives now. ShapeDtypeStructs pass through; other leaves (numpy arrays, Python
  scalars) stay as they are and are restored as such."""
  def one(x):
    if isinstance(x, jax.ShapeDtypeStruct):
      return x
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(one, tree)


def key_to_data(key: jax.Array) -> jax.Array:
  """The raw uint32 data of a typed PRNG key (for code that stores keys outside Orbax; Orbax
  0.12 itself saves typed keys and restores them when the target leaf has a key dtype)."""
  return jax.random.key_data(key)


def data_to_key(data: jax.Array, impl: str | None = None) -> jax.Array:
  """The inverse of `key_to_data` (`impl` defaults to JAX's default PRNG, threefry2x32)."""
  return jax.random.wrap_key_data(data, impl=impl)


class Checkpointer:
  """Keeps the last `keep` checkpoints of one run directory (`keep=None` keeps all).

  With `async_save` (the default) `save` returns once the arrays are copied to host memory
  (tens of ms); the files are written in a background thread. The device buffers may be donated
  or deleted as soon as `save` returns. `wait()` blocks until the write is committed; `close()`
  (or leaving the `with` block) waits too.
  """

  def __init__(self, directory: str | os.PathLike, *, keep: int | None = 3,
               async_save: bool = True, save_interval_steps: int = 1):
    if keep is not None and keep < 1:
      raise ValueError(f"keep must be >= 1 (or None to keep all), got {keep}")
    if save_interval_steps < 1:
      raise ValueError(f"save_interval_steps must be >= 1, got {save_interval_steps}")
    directory = os.fspath(directory)
    self.directory = directory if "://" in directory else os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, enable_async_checkpointing=async_save,
        save_interval_steps=save_interval_steps)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=(STATE, EXTRAS))

  # -----------------------------------------------------------------------------------------------

  def save(self, step: int, state: Any, extras: dict | None = None, *,
           force: bool = False) -> bool:
    """Saves `state` and `extras` as `step`; returns whether a save happened.

    Without `force` a step off the `save_interval_steps` grid, or not after the latest saved
    step, is skipped. An existing step is never overwritten (a warning when forced). All
    processes call this with the same step; each process's `extras` are its own.
    """
    step = int(step)
    extras = _json_copy({} if extras is None else extras)
    if force and step in self._manager.all_steps():
      logging.warning("checkpoint step %d already exists in %s; not overwriting it",
                      step, self.directory)
      return False
    return bool(self._manager.save(
        step, args=ocp.args.Composite(**{STATE: ocp.args.StandardSave(state),
                                         EXTRAS: _ExtrasSave(extras)}),
        force=force))

  def restore(self, step: int | None, target: Any) -> tuple[Any, dict] | None:
    """Restores `step` (None: the latest) onto `target`'s structure, dtypes and shardings.

    `target` is a pytree of ShapeDtypeStructs with shardings, or of arrays whose shardings are
    used. Returns `(state, extras)`, or None when `step` is None and there is no checkpoint.
    `extras` are what this process saved (process 0's when the process count changed).
    """
    self.wait()
    steps = self.all_steps()
    if step is None:
      if not steps:
        return None
      step = steps[-1]
    elif int(step) not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory} "
                              f"(steps there: {steps})")
    step = int(step)
    target = _with_default_shardings(abstract_like(target))
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target),
                                           EXTRAS: _ExtrasRestore()}))
    except ValueError as e:
      raise ValueError(f"checkpoint {self.directory} step {step} does not match the restore "
                       f"target: {e}") from e
    return restored[STATE], dict(restored[EXTRAS] or {})

  # -----------------------------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(int(s) for s in self._manager.all_steps())

  def wait(self) -> None:
    """Blocks until a pending async save is committed (and raises its error, if any)."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> Checkpointer:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _json_copy(extras: dict) -> dict:
  """A deep copy through JSON: a bad value fails now, naming the dict, not in the save thread;
  and later mutation by the caller cannot race the async write."""
  if not isinstance(extras, dict):
    raise TypeError(f"checkpoint extras must be a dict, got {type(extras).__name__}")
  try:
    return json.loads(json.dumps(extras, allow_nan=False, default=_json_default))
  except (TypeError, ValueError) as e:
    raise TypeError(f"checkpoint extras are not JSON-serialisable: {e}") from e


def _json_default(x):
  if isinstance(x, (np.generic, np.ndarray, jax.Array)) and np.ndim(x) == 0:
    return np.asarray(x).item()
  raise TypeError(f"{type(x).__name__} value {x!r}")


def _with_default_shardings(target: Any) -> Any:
  """Gives a sharding-less ShapeDtypeStruct (plain `jax.eval_shape` output) the first local
  device in a single-process run; in a multi-process run that would be a guess, so it is an
  error naming the leaf."""
  def one(path, x):
    if isinstance(x, jax.ShapeDtypeStruct) and x.sharding is None:
      if jax.process_count() > 1:
        raise ValueError(f"restore target leaf {jax.tree_util.keystr(path)} has no sharding")
      device = jax.local_devices()[0]
      return jax.ShapeDtypeStruct(x.shape, x.dtype,
                                  sharding=jax.sharding.SingleDeviceSharding(device))
    return x
  return jax.tree_util.tree_map_with_path(one, target)


# -------------------------------------------------------------------------------------------------
# Per-process JSON extras (the pattern of grain.checkpoint.CheckpointHandler).

class _ExtrasHandler(ocp.CheckpointHandler):
  """Writes `process_<i>-of-<n>.json` from each process into the item directory (which Orbax
  creates before any process writes, and renames into place with the rest of the step)."""

  def save(self, directory: epath.Path, args: _ExtrasSave) -> None:
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    (directory / name).write_text(json.dumps(args.item, indent=1))

  def restore(self, directory: epath.Path, args: _ExtrasRestore | None = None) -> dict:
    path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not path.exists():
      saved = sorted(directory.glob("process_0-of-*.json"))
      if not saved:
        raise FileNotFoundError(f"no checkpoint extras in {directory}")
      logging.warning("%s: saved by a different number of processes; using process 0's extras",
                      directory)
      path = saved[0]
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path) -> None:
    return None

  def finalize(self, directory: epath.Path) -> None:
    pass

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(_ExtrasHandler, for_save=True)
@dataclasses.dataclass
class _ExtrasSave(ocp.args.CheckpointArgs):
  item: dict


@ocp.args.register_with_handler(_ExtrasHandler, for_restore=True)
@dataclasses.dataclass
class _ExtrasRestore(ocp.args.CheckpointArgs):
  pass
