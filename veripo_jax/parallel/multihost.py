"""Multi-host helpers: distributed initialisation, gathering host objects, fetching global arrays.

Every RL step builds its host-side inputs (prompt batches with their video index tables) from
the same global batch on every process; these helpers get that batch there and bring device
results back to every host.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, cpu_collectives: str | None = None) -> None:
  """`jax.distributed.initialize` from arguments or the environment (automatic on Cloud TPU).

  Environment: VERIPO_COORDINATOR, VERIPO_NUM_PROCESSES, VERIPO_PROCESS_ID; on CPU, gloo
  collectives let processes on one machine (tests) run real multi-host code.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get("VERIPO_COORDINATOR")
  if num_processes is None and "VERIPO_NUM_PROCESSES" in env:
    num_processes = int(env["VERIPO_NUM_PROCESSES"])
  if process_id is None and "VERIPO_PROCESS_ID" in env:
    process_id = int(env["VERIPO_PROCESS_ID"])
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)


def allgather_objects(obj: Any) -> list[Any]:
  """Every process's `obj` (picklable), in process order, on every process."""
  if jax.process_count() == 1:
    return [obj]
  payload = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = multihost_utils.process_allgather(np.array([payload.size], np.int64))
  padded = np.zeros((int(sizes.max()),), np.uint8)
  padded[:payload.size] = payload
  gathered = multihost_utils.process_allgather(padded)
  return [pickle.loads(gathered[i, :int(n)].tobytes()) for i, n in enumerate(sizes.reshape(-1))]


def to_host(x: jax.Array) -> np.ndarray:
  """The full value of a (possibly multi-host sharded) array as numpy on every process."""
  if jax.process_count() == 1 or getattr(x, "is_fully_addressable", True):
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))
