"""Batched generation with a static KV cache: one jitted prefill, one jitted decode loop.

Each prompt (with its images/videos) is prefilled once; for `num_samples=G` the cache is forked
G times, so the vision tower never runs G times for one prompt (the GRPO rollout shape). The
decode loop is a single `lax.while_loop` with the cache donated: no host round trip per token.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh

from veripo_jax.inference.sampling import SamplingParams, next_token
from veripo_jax.models.family import CausalLM
from veripo_jax.parallel.sharding import DEFAULT_RULES, activation_sharding


@struct.dataclass
class GenerateOutput:
  """Rows are prompt-major: row b*G + g is sample g of prompt b."""
  tokens: jax.Array     # (B*G, max_new_tokens) int32; pad_token_id after the end
  logprobs: jax.Array   # (B*G, max_new_tokens) fp32 log pi(token), unfiltered model; 0 after end
  lengths: jax.Array    # (B*G,) int32 generated tokens, the EOS token included


def generate(model: CausalLM, batch: Mapping[str, Any], max_new_tokens: int, *,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             rng: jax.Array | None = None, num_samples: int = 1,
             eos_token_ids: Sequence[int] | None = None, pad_token_id: int | None = None,
             mesh: Mesh | None = None, rules=DEFAULT_RULES,
             prepared: tuple[Any, Any] | None = None) -> GenerateOutput:
  """Generates up to `max_new_tokens` for each left-padded prompt in `batch`.

  `batch` holds the processor fields the model's `prepare` reads (`input_ids`,
  `attention_mask` and, for Qwen2.5-VL, optional image / video pixels and grids).
  `prepared` = (inputs, next positions) of `batch` already prepared by the caller (who also
  trains on them: a GRPO round prepares its prompts once); `batch` is then not read.
  Log-probs are of the model's own distribution (log_softmax of the logits, before temperature
  and filtering): what a policy-gradient update compares against.
  """
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  params = SamplingParams(temperature, top_p, top_k)
  cfg = model.config
  inputs, next_pos = prepared or model.prepare(batch)
  eos = tuple(eos_token_ids) if eos_token_ids is not None else (cfg.eos_token_id,)
  pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
  rng = jax.random.key(0) if rng is None else rng
  graphdef, state = nnx.split(model)
  cache_length = inputs.input_ids.shape[1] + max_new_tokens
  logits, cache = _prefill(graphdef, state, inputs, num_samples=num_samples,
                           cache_length=cache_length, mesh=mesh, rules=tuple(rules))
  positions = jnp.repeat(jnp.asarray(next_pos, jnp.int32), num_samples)
  out, _ = _decode(graphdef, state, logits, positions, cache, rng,
                   max_new_tokens=max_new_tokens, params=params, eos=eos, pad=pad, mesh=mesh,
                   rules=tuple(rules))
  return out


@functools.partial(jax.jit, static_argnames=("graphdef", "num_samples", "cache_length", "mesh",
                                              "rules"))
def _prefill(graphdef, state, inputs, *, num_samples, cache_length, mesh, rules):
  with activation_sharding(mesh, rules):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(inputs.input_ids.shape[0], cache_length)
    logits, cache = model.prefill(inputs, cache)
  return jnp.repeat(logits.astype(jnp.float32), num_samples, axis=0), cache.repeat(num_samples)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "params", "eos",
                                              "pad", "mesh", "rules"),
                   donate_argnames=("cache",))
def _decode(graphdef, state, logits, positions, cache, rng, *, max_new_tokens,
            params: SamplingParams, eos, pad, mesh, rules) -> tuple[GenerateOutput, Any]:
  """Returns the final cache too, so the donated cache buffers are reused in place.

  The loop decodes `max_new_tokens - 1` steps: the last token is chosen from the logits the
  loop leaves behind, so no step computes logits nobody reads.
  """
  batch = logits.shape[0]
  eos_ids = jnp.asarray(eos, jnp.int32)

  def emit(step, logits, done, tokens, logprobs, lengths, rng):
    """Chooses and records the token of `step` for every row still running."""
    rng, key = jax.random.split(rng)
    token = next_token(logits, key, params)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1)[:, 0]
    token = jnp.where(done, pad, token)
    tokens = tokens.at[:, step].set(token)
    logprobs = logprobs.at[:, step].set(jnp.where(done, 0.0, logp))
    lengths = lengths + (~done).astype(jnp.int32)
    return token, done | jnp.isin(token, eos_ids), tokens, logprobs, lengths, rng

  def cond(carry):
    step, _, _, done, *_ = carry
    return (step < max_new_tokens - 1) & ~jnp.all(done)

  def body(carry):
    step, logits, positions, done, tokens, logprobs, lengths, rng, cache = carry
    token, done, tokens, logprobs, lengths, rng = emit(step, logits, done, tokens, logprobs,
                                                       lengths, rng)
    with activation_sharding(mesh, rules):
      model = nnx.merge(graphdef, state)
      logits, cache = model.decode_step(token, positions, cache)
    return (step + 1, logits.astype(jnp.float32), positions + 1, done, tokens, logprobs, lengths,
            rng, cache)

  carry = (jnp.zeros((), jnp.int32), logits, positions, jnp.zeros((batch,), bool),
           jnp.full((batch, max_new_tokens), pad, jnp.int32),
           jnp.zeros((batch, max_new_tokens), jnp.float32), jnp.zeros((batch,), jnp.int32),
           rng, cache)
  step, logits, _, done, tokens, logprobs, lengths, rng, cache = jax.lax.while_loop(
      cond, body, carry)
  # After an early stop every row is done and this writes nothing but padding.
  _, _, tokens, logprobs, lengths, _ = emit(step, logits, done, tokens, logprobs, lengths, rng)
  return GenerateOutput(tokens=tokens, logprobs=logprobs, lengths=lengths), cache

