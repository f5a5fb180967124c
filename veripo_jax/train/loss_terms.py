"""What every loss hands the learner: sums and counts, so accumulation is exact.

A loss returns an un-normalised `loss_sum`, its `weight` (the count it is divided by) and metric
(sum, count) pairs. Gradient accumulation adds the sums and the weights over micro-batches and
divides once at the end, so an accumulated step equals one big batch exactly for every
aggregation (the weights never depend on the parameters).
"""

from __future__ import annotations

import jax
from flax import struct


@struct.dataclass
class LossTerms:
  loss_sum: jax.Array                          # () fp32, differentiable
  weight: jax.Array                            # () fp32, what loss_sum is divided by
  metrics: dict[str, tuple[jax.Array, jax.Array]] = struct.field(default_factory=dict)
