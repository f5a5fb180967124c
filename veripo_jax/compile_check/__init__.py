"""Ahead-of-time compilation of a run's programs for a Cloud TPU slice, on a CPU host.

  python -m veripo_jax.compile_check --config=configs/veripo_qwen2_5_vl_7b.py \
      --topology=v5p-128 [--json=OUT] [--prompt_length=1536]

With libtpu installed (requirements-tpu.txt), XLA compiles for a named topology without any TPU
attached. Every program the config's stages run is built through the project's own code with
abstract models (`nnx.eval_shape`) and the run's shardings: SFT / GRPO / DPO `Learner`
accumulate and apply, the log-prob passes, the frozen tower's features, rollout and evaluation
`generate` (prefill and decode), and the judge server's engine (init, prefill, insert,
generate). One row per program: per-chip bytes (XLA's memory analysis plus the stage's other
live buffers) against the chip's HBM, compile seconds on this host, and XLA's FLOPs (which
count a loop body once: with scanned layers one layer's, for decode one step's; time estimates
are `compile_check.cost`'s). The command exits 1 when a program does not fit, 2 on a bad flag,
config or topology.
"""

from veripo_jax.compile_check.check import Row, check, format_row, write_json
from veripo_jax.compile_check.topology import Topology, TopologyError, parse_topology

__all__ = ["Row", "Topology", "TopologyError", "check", "format_row", "parse_topology",
           "write_json"]
