"""Next-token selection: greedy, or temperature / top-k / top-p sampling, after an optional
repetition penalty.

The order is transformers': repetition penalty on the raw logits, then temperature, top-k and
top-p (penalty and temperature commute, both keep the sign; the filters do not commute with the
penalty: top-k / top-p choose among the penalised logits).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """temperature 0 is greedy; top_k 0 and top_p 1 disable those filters; repetition_penalty 1
  disables the penalty (> 1 discourages ids already in the prompt or output, < 1 favours them)."""
  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  repetition_penalty: float = 1.0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")
    if not self.repetition_penalty > 0:          # NaN fails too
      raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")


def prompt_seen(input_ids: jax.Array, attention_mask: jax.Array | None,
                vocab_size: int) -> jax.Array:
  """(B, L) prompt ids -> (B, V) bool: which ids occur in each row's prompt.

  Positions whose attention mask is 0 (left padding) are left out, as transformers >= 5 does
  (`prompt_ignore_length` = the left-padding length) and vLLM (no padding at all) does. Media
  placeholder ids (image / video pad, vision start / end) are prompt tokens like any other and
  are counted, as in both. Ids outside [0, V) are dropped (transformers clamps and drops those
  the LM head cannot emit).
  """
  ids = jnp.asarray(input_ids, jnp.int32)
  keep = (ids >= 0) & (ids < vocab_size)
  if attention_mask is not None:
    keep &= jnp.asarray(attention_mask, bool)
  rows = jnp.arange(ids.shape[0])[:, None]
  return jnp.zeros((ids.shape[0], vocab_size), bool).at[rows, jnp.where(keep, ids, vocab_size)].set(
      True, mode="drop")


def mark_seen(seen: jax.Array, tokens: jax.Array) -> jax.Array:
  """Adds each row's token (B,) to `seen` (B, V); elementwise, so it keeps `seen`'s sharding."""
  return seen | (jnp.arange(seen.shape[-1], dtype=jnp.int32) == tokens[:, None])


def repetition_penalty(logits: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
  """transformers' RepetitionPenaltyLogitsProcessor: a seen token's logit is divided by
  `penalty` if positive, multiplied by it if negative (once, however often the token occurred)."""
  return jnp.where(seen, jnp.where(logits < 0, logits * penalty, logits / penalty), logits)


def filter_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
  """Temperature-scaled logits with tokens outside top-k / the top-p nucleus set to -inf."""
  x = logits.astype(jnp.float32) / params.temperature
  if params.top_k:
    kth = jax.lax.top_k(x, params.top_k)[0][..., -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  if params.top_p < 1.0:
    sorted_x = jnp.sort(x, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(sorted_x, axis=-1)
    # Keep a token if the mass strictly before it is below top_p (the top token always stays).
    before = jnp.cumsum(probs, axis=-1) - probs
    cutoff = jnp.min(jnp.where(before < params.top_p, sorted_x, jnp.inf), axis=-1, keepdims=True)
    x = jnp.where(x < cutoff, -jnp.inf, x)
  return x


def next_token(logits: jax.Array, rng: jax.Array, params: SamplingParams,
               seen: jax.Array | None = None) -> jax.Array:
  """logits (B, V) -> token ids (B,). `seen` (B, V) bool, the ids already in each row's prompt
  or output, is needed (and read) only when `params.repetition_penalty != 1`."""
  if params.repetition_penalty != 1.0:
    if seen is None:
      raise ValueError(f"repetition_penalty {params.repetition_penalty} needs the seen-token "
                       "table (`seen`)")
    logits = repetition_penalty(logits, seen, params.repetition_penalty)
  if params.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, params), axis=-1).astype(jnp.int32)
