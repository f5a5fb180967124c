"""Loss functions over the model, one per stage: hashable configs a `Learner` jits as static args.

Each maps (model, stage batch) -> `LossTerms` through the pure losses of `rl.losses`.

`logprob_chunk` (every objective; 0 = off): response positions per LM-head chunk. With C > 0
the log-probs and entropies are computed C positions at a time, each chunk's logits recomputed
in the backward (`rl.sequences.response_logprobs`), so a micro-batch holds (rows, C, vocab)
logits instead of (rows, R, vocab); same values up to float summation order.
`sequence_logprobs()` is the gradient-free pass (old/reference log-probs) with the same chunks.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from veripo_jax.rl.losses import dpo_loss, grpo_loss, sft_loss
from veripo_jax.rl.sequences import SequenceBatch, response_logprobs, sequence_logprob
from veripo_jax.train.loss_terms import LossTerms


class _Chunked:
  """`logprob_chunk` checked on construction (a config error names it)."""
  logprob_chunk: int

  def __post_init__(self):
    chunk = self.logprob_chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
      raise ValueError(f"logprob_chunk: a non-negative integer (0 = unchunked), not {chunk!r}")

  def sequence_logprobs(self) -> SequenceLogprobs:
    """The gradient-free per-token log-probs (old/reference) with this objective's chunks."""
    return SequenceLogprobs(logprob_chunk=self.logprob_chunk)


@struct.dataclass
class GRPOBatch:
  sequences: SequenceBatch     # N = groups x G responses
  old_logp: jax.Array          # (N, R) log-probs under the sampling policy
  advantages: jax.Array        # (N,)
  ref_logp: jax.Array | None = None


@struct.dataclass
class DPOBatch:
  sequences: SequenceBatch     # 2P rows: chosen responses first, then the rejected ones
  ref_logp: jax.Array          # (2P,) reference sequence log-probs, same order
  valid: jax.Array             # (P,) 0 for padding pairs
  nll_weight: jax.Array | None = None   # (P,) weight of the RPO NLL term per pair (default 1)
  nll_from: jax.Array | None = None     # (P,) first chosen token of the NLL term (default 0)


@dataclasses.dataclass(frozen=True)
class SequenceLogprobs(_Chunked):
  """Per-token log-probs (N, R) without gradients: old/reference log-probs."""
  logprob_chunk: int = 0

  def __call__(self, model, batch: SequenceBatch) -> jax.Array:
    logp, _ = response_logprobs(model, batch, chunk=self.logprob_chunk)
    return jnp.where(batch.loss_mask > 0, logp, 0.0)


@dataclasses.dataclass(frozen=True)
class SFTObjective(_Chunked):
  aggregation: str = "token-mean"
  remat: bool = False
  logprob_chunk: int = 0          # > 0: LM head over this many response positions at a time

  def __call__(self, model, batch: SequenceBatch) -> LossTerms:
    logp, _ = response_logprobs(model, batch, remat=self.remat, chunk=self.logprob_chunk)
    return sft_loss(logp, batch.loss_mask, aggregation=self.aggregation)


@dataclasses.dataclass(frozen=True)
class GRPOObjective(_Chunked):
  clip_eps: float = 0.2
  clip_eps_high: float | None = None
  dual_clip: float | None = 3.0
  kl_coef: float = 0.0
  aggregation: str = "seq-mean-token-mean"
  remat: bool = False
  logprob_chunk: int = 0          # > 0: LM head over this many response positions at a time

  def __call__(self, model, batch: GRPOBatch) -> LossTerms:
    logp, entropy = response_logprobs(model, batch.sequences, remat=self.remat,
                                      chunk=self.logprob_chunk)
    return grpo_loss(logp, batch.old_logp, batch.advantages, batch.sequences.loss_mask,
                      ref_logp=batch.ref_logp, entropy=jax.lax.stop_gradient(entropy),
                      clip_eps=self.clip_eps, clip_eps_high=self.clip_eps_high,
                      dual_clip=self.dual_clip, kl_coef=self.kl_coef,
                      aggregation=self.aggregation)


@dataclasses.dataclass(frozen=True)
class DPOObjective(_Chunked):
  beta: float = 0.1
  label_smoothing: float = 0.0
  nll_coef: float = 0.0           # > 0: RPO's per-token NLL on the chosen response
  remat: bool = False
  logprob_chunk: int = 0          # > 0: LM head over this many response positions at a time

  def __call__(self, model, batch: DPOBatch) -> LossTerms:
    logp, _ = response_logprobs(model, batch.sequences, remat=self.remat,
                                chunk=self.logprob_chunk)
    mask = batch.sequences.loss_mask
    seq = sequence_logprob(logp, mask)
    p = seq.shape[0] // 2
    nll_mask = mask[:p].astype(jnp.float32)
    if batch.nll_from is not None:
      nll_mask = nll_mask * (jnp.arange(mask.shape[1])[None] >= batch.nll_from[:, None])
    return dpo_loss(seq[:p], seq[p:], batch.ref_logp[:p], batch.ref_logp[p:], batch.valid,
                    beta=self.beta, label_smoothing=self.label_smoothing,
                    chosen_tokens=nll_mask.sum(-1), nll_coef=self.nll_coef,
                    nll_weight=batch.nll_weight,
                    nll_logp=None if batch.nll_from is None else
                    sequence_logprob(logp[:p], nll_mask))
