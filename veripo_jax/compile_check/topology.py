"""Cloud TPU accelerator types (`v5p-128`, `v5e-256`, ...) -> compile-only devices.

A name counts TensorCores for v4 and v5p (two per chip: v5p-128 is 64 chips) and chips for
v5e and v6e. libtpu builds the slice's devices without any TPU attached
(`jax.experimental.topologies.get_topology_desc`), so XLA compiles for it on a CPU host.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re

GIB = 1024 ** 3

# kind: (libtpu's generation name, chip config, TensorCores per name unit, usable HBM per
# chip in bytes, chips per host, peak bf16 FLOP/s per chip, HBM bytes/s per chip). HBM: v5p's
# 95 GB HBM2e of which XLA may use 95.74 GiB (its bytes_limit); v4 32 GiB, v5e 16 GiB, v6e
# 32 GiB (the chips' HBM). Peaks and bandwidths: Cloud TPU documentation.
_KINDS = {
    "v4": ("v4", "megacore", 2, 32 * GIB, 4, 275e12, 1228e9),
    "v5p": ("v5", "megacore", 2, int(95.74 * GIB), 4, 459e12, 2765e9),
    "v5e": ("v5e", "default", 1, 16 * GIB, 4, 197e12, 819e9),
    "v6e": ("v6e", "default", 1, 32 * GIB, 4, 918e12, 1640e9),
}
# Single-host 2-D slices (v5e / v6e): chips -> (x, y).
_FLAT = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8), 128: (8, 16),
         256: (16, 16)}
# Small 3-D slices (v4 / v5p); larger ones are multiples of 4 on every side.
_CUBE = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4)}


class TopologyError(ValueError):
  """An accelerator type this tool does not know."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str                 # the accelerator type, e.g. v5p-128
  kind: str                 # v4, v5p, v5e, v6e
  chips: int
  shape: tuple[int, ...]    # chips along each ICI axis
  hbm_bytes: int            # usable HBM per chip
  chip_config: str
  generation: str
  peak_flops: float         # bf16 FLOP/s per chip
  hbm_bandwidth: float      # HBM bytes/s per chip

  @property
  def topology_name(self) -> str:
    """libtpu's topology string, e.g. v5:4x4x4."""
    return f"{self.generation}:{'x'.join(map(str, self.shape))}"

  @property
  def chips_per_host_bounds(self) -> tuple[int, int, int]:
    if self.chips == 1:
      return (1, 1, 1)
    return (2, 2, 1)

  @property
  def hosts(self) -> int:
    """Hosts of the slice (JAX processes of a run on it)."""
    return max(1, self.chips // math.prod(self.chips_per_host_bounds))

  def devices(self) -> list:
    """Compile-only devices of the whole slice, in libtpu's order."""
    # libtpu reads these when it loads; without them it warns that it found no TPU host.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", self.name)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # No chip is opened: several compile checks (or one beside a test) may load libtpu at once.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies
    topo = topologies.get_topology_desc(
        platform="tpu", topology_name=self.topology_name, chip_config_name=self.chip_config,
        chips_per_host_bounds=self.chips_per_host_bounds, num_slices=1)
    return list(topo.devices)


def _cube(chips: int) -> tuple[int, int, int] | None:
  """The most cubic (a <= b <= c) shape of multiples of 4 holding `chips`."""
  if chips in _CUBE:
    return _CUBE[chips]
  if chips % 64:
    return None
  n = chips // 64
  best = None
  for a, b in itertools.product(range(1, n + 1), repeat=2):
    if a <= b and n % (a * b) == 0 and b <= n // (a * b):
      shape = (4 * a, 4 * b, 4 * (n // (a * b)))
      if best is None or (shape[2], shape[1]) < (best[2], best[1]):
        best = shape
  return best


def parse_topology(name: str) -> Topology:
  """`v5p-128` -> its Topology; an unknown name raises TopologyError naming the known forms."""
  known = ", ".join(f"{k}-N" for k in _KINDS)
  m = re.fullmatch(r"(v4|v5p|v5e|v6e|v5litepod)-(\d+)", name.strip().lower())
  if not m:
    raise TopologyError(f"unknown TPU topology {name!r}: expected a Cloud TPU accelerator type "
                        f"such as v5p-128, v5e-256, v6e-64 or v4-32 ({known})")
  kind = "v5e" if m.group(1) == "v5litepod" else m.group(1)
  generation, chip_config, cores_per_chip, hbm, _, peak, bandwidth = _KINDS[kind]
  count = int(m.group(2))
  if count % cores_per_chip:
    raise TopologyError(f"unknown TPU topology {name!r}: {kind} names count TensorCores, "
                        f"{cores_per_chip} per chip (an even number)")
  chips = count // cores_per_chip
  shape = _FLAT.get(chips) if cores_per_chip == 1 else _cube(chips)
  if shape is None:
    sizes = (sorted(_FLAT) if cores_per_chip == 1 else
             sorted(_CUBE) + ["multiples of 64"])
    raise TopologyError(f"unknown TPU topology {name!r}: no {kind} slice of {chips} chips "
                        f"(chips: {', '.join(map(str, sizes))})")
  return Topology(name=f"{kind}-{count}", kind=kind, chips=chips, shape=tuple(shape),
                  hbm_bytes=hbm, chip_config=chip_config, generation=generation,
                  peak_flops=peak, hbm_bandwidth=bandwidth)
