"""Next-token selection: greedy, or temperature / top-k / top-p sampling."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """temperature 0 is greedy; top_k 0 and top_p 1 disable those filters."""
  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0

  def __post_init__(self):
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0, got {self.top_k}")


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


def next_token(logits: jax.Array, rng: jax.Array, params: SamplingParams) -> jax.Array:
  """logits (B, V) -> token ids (B,)."""
  if params.temperature == 0.0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return jax.random.categorical(rng, filter_logits(logits, params), axis=-1).astype(jnp.int32)
