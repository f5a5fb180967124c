"""Training infrastructure: checkpoints, metrics and progress, graceful preemption."""

from veripo_jax.train.checkpointing import Checkpointer, abstract_like, data_to_key, key_to_data
from veripo_jax.train.metrics import MetricsWriter, progress, read_metrics
from veripo_jax.train.preemption import PreemptionGuard

__all__ = ["Checkpointer", "abstract_like", "key_to_data", "data_to_key", "MetricsWriter",
           "read_metrics", "progress", "PreemptionGuard"]
