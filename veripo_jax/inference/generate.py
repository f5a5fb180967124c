"""Batched generation with a static KV cache: one jitted prefill, one jitted decode loop.

Each prompt (with its images/videos) is prefilled once; for `num_samples=G` the cache is forked
G times, so the vision tower never runs G times for one prompt (the GRPO rollout shape). The
decode loop is a single `lax.while_loop` with the cache donated: no host round trip per token.
A repetition penalty keeps a (B*G, V) bool table of the ids seen so far (prompt, then each
emitted token) in the loop state, sharded like the logits ("batch", "vocab"): 1 byte per entry,
e.g. 78 MB for 512 rows of a 152k vocabulary before sharding. With penalty 1 there is no table
and the compiled programs are those without the feature.

`generation(...)` does the host-side preparation and returns the two programs with their
arguments (`Generation`): `generate` runs them; `veripo_jax.compile_check` lowers and compiles
them for an abstract model (`nnx.eval_shape`) from the same preparation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping, Sequence

import numpy as np

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax.sharding import Mesh

from veripo_jax.inference.sampling import SamplingParams, mark_seen, next_token, prompt_seen
from veripo_jax.models.family import CausalLM
from veripo_jax.parallel.sharding import (DEFAULT_RULES, activation_sharding, constrain,
                                         constrain_tree)


@struct.dataclass
class GenerateOutput:
  """Rows are prompt-major: row b*G + g is sample g of prompt b."""
  tokens: jax.Array     # (B*G, max_new_tokens) int32; pad_token_id after the end
  logprobs: jax.Array   # (B*G, max_new_tokens) fp32 log pi(token), unfiltered model; 0 after end
  lengths: jax.Array    # (B*G,) int32 generated tokens, the EOS token included


def generate(model: CausalLM, batch: Mapping[str, Any], max_new_tokens: int, *,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
             repetition_penalty: float = 1.0, rng: jax.Array | None = None, num_samples: int = 1,
             eos_token_ids: Sequence[int] | None = None, pad_token_id: int | None = None,
             mesh: Mesh | None = None, rules=DEFAULT_RULES,
             prepared: tuple[Any, Any] | None = None) -> GenerateOutput:
  """Generates up to `max_new_tokens` for each left-padded prompt in `batch`.

  `batch` holds the processor fields the model's `prepare` reads (`input_ids`,
  `attention_mask` and, for Qwen2.5-VL, optional image / video pixels and grids).
  `prepared` = (inputs, next positions) of `batch` already prepared by the caller (who also
  trains on them: a GRPO round prepares its prompts once); `batch` is then not read.
  Log-probs are of the model's own distribution (log_softmax of the logits, before the
  repetition penalty, temperature and filtering): what a policy-gradient update compares against.
  `repetition_penalty` != 1 is transformers' (and vLLM's): each step, the logit of every id
  already in the row's prompt (`inputs.input_ids` where `inputs.attention_mask` is set, so left
  padding is not counted, as in transformers >= 5; media placeholder ids are) or in its output
  so far is divided by the penalty if positive, multiplied by it if negative, before
  temperature, top-k and top-p.
  """
  run = generation(model, batch, max_new_tokens, temperature=temperature, top_p=top_p,
                   top_k=top_k, repetition_penalty=repetition_penalty, rng=rng,
                   num_samples=num_samples, eos_token_ids=eos_token_ids,
                   pad_token_id=pad_token_id, mesh=mesh, rules=rules, prepared=prepared)
  fn, args, kwargs = run.prefill()
  logits, cache, seen = fn(*args, **kwargs)
  fn, args, kwargs = run.decode(logits, cache, seen)
  out, _ = fn(*args, **kwargs)
  return out


@dataclasses.dataclass(frozen=True)
class Generation:
  """One `generate` call prepared on the host: its two jitted programs and their arguments,
  each as (jitted function, positional arguments, keyword arguments)."""
  graphdef: Any
  state: Any
  inputs: Any
  positions: np.ndarray     # (B*G,) int32 rope position of each row's first generated token
  rng: jax.Array
  prefill_options: dict
  decode_options: dict

  def prefill(self):
    """-> (last logits, cache, seen-token table or None), `num_samples` rows per prompt."""
    return _prefill, (self.graphdef, self.state, self.inputs), self.prefill_options

  def decode(self, logits, cache, seen):
    """The decode loop from `prefill`'s outputs -> (GenerateOutput, final cache)."""
    return (_decode, (self.graphdef, self.state, logits, self.positions, cache, self.rng, seen),
            self.decode_options)


def generation(model: CausalLM, batch: Mapping[str, Any], max_new_tokens: int, *,
               temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
               repetition_penalty: float = 1.0, rng: jax.Array | None = None,
               num_samples: int = 1, eos_token_ids: Sequence[int] | None = None,
               pad_token_id: int | None = None, mesh: Mesh | None = None, rules=DEFAULT_RULES,
               prepared: tuple[Any, Any] | None = None) -> Generation:
  """The host-side half of `generate` (same arguments): inputs, positions and options."""
  if max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  params = SamplingParams(temperature, top_p, top_k, repetition_penalty)
  cfg = model.config
  inputs, next_pos = prepared or model.prepare(batch)
  eos = tuple(eos_token_ids) if eos_token_ids is not None else (cfg.eos_token_id,)
  pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
  rng = jax.random.key(0) if rng is None else rng
  graphdef, state = nnx.split(model)
  cache_length = inputs.input_ids.shape[1] + max_new_tokens
  rules = tuple(rules)
  return Generation(
      graphdef=graphdef, state=state, inputs=inputs,
      positions=np.repeat(np.asarray(next_pos, np.int32), num_samples), rng=rng,
      prefill_options=dict(num_samples=num_samples, cache_length=cache_length, mesh=mesh,
                           rules=rules, track_seen=params.repetition_penalty != 1.0),
      decode_options=dict(max_new_tokens=max_new_tokens, params=params, eos=eos, pad=pad,
                          mesh=mesh, rules=rules))


@functools.partial(jax.jit, static_argnames=("graphdef", "num_samples", "cache_length", "mesh",
                                              "rules", "track_seen"))
def _prefill(graphdef, state, inputs, *, num_samples, cache_length, mesh, rules, track_seen):
  """-> (last logits, cache, seen-token table or None), all repeated `num_samples` times."""
  seen = None
  with activation_sharding(mesh, rules):
    model = nnx.merge(graphdef, state)
    cache = model.init_cache(inputs.input_ids.shape[0], cache_length)
    logits, cache = model.prefill(inputs, cache)
    if track_seen:
      seen = prompt_seen(inputs.input_ids, inputs.attention_mask, logits.shape[-1])
      seen = constrain(jnp.repeat(seen, num_samples, axis=0), ("batch", "vocab"))
    # Pinned: left to propagation, the forked cache of a long prompt bucket came out
    # replicated on every chip (72B, 20k tokens: 3,200 GiB a chip, compile_check on v5p-128).
    logits = constrain(jnp.repeat(logits.astype(jnp.float32), num_samples, axis=0),
                       ("batch", "vocab"))
    cache = constrain_tree(cache.repeat(num_samples), model.cache_axes())
  return logits, cache, seen


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "params", "eos",
                                              "pad", "mesh", "rules"),
                   donate_argnames=("cache",))
def _decode(graphdef, state, logits, positions, cache, rng, seen, *, max_new_tokens,
            params: SamplingParams, eos, pad, mesh, rules) -> tuple[GenerateOutput, Any]:
  """Returns the final cache too, so the donated cache buffers are reused in place.

  The loop decodes `max_new_tokens - 1` steps: the last token is chosen from the logits the
  loop leaves behind, so no step computes logits nobody reads. `seen` is None without a
  repetition penalty (then nothing of it is traced).
  """
  batch = logits.shape[0]
  eos_ids = jnp.asarray(eos, jnp.int32)

  def emit(step, logits, seen, done, tokens, logprobs, lengths, rng):
    """Chooses and records the token of `step` for every row still running."""
    rng, key = jax.random.split(rng)
    token = next_token(logits, key, params, seen)
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
    step, logits, positions, done, tokens, logprobs, lengths, rng, cache, seen = carry
    token, done, tokens, logprobs, lengths, rng = emit(step, logits, seen, done, tokens,
                                                       logprobs, lengths, rng)
    with activation_sharding(mesh, rules):
      model = nnx.merge(graphdef, state)
      logits, cache = model.decode_step(token, positions, cache)
      if seen is not None:      # a finished row adds its padding: it reads the table no more
        seen = constrain(mark_seen(seen, token), ("batch", "vocab"))
    return (step + 1, logits.astype(jnp.float32), positions + 1, done, tokens, logprobs, lengths,
            rng, cache, seen)

  carry = (jnp.zeros((), jnp.int32), logits, positions, jnp.zeros((batch,), bool),
           jnp.full((batch, max_new_tokens), pad, jnp.int32),
           jnp.zeros((batch, max_new_tokens), jnp.float32), jnp.zeros((batch,), jnp.int32),
           rng, cache, seen)
  step, logits, _, done, tokens, logprobs, lengths, rng, cache, seen = jax.lax.while_loop(
      cond, body, carry)
  # After an early stop every row is done and this writes nothing but padding.
  _, _, tokens, logprobs, lengths, _ = emit(step, logits, seen, done, tokens, logprobs, lengths,
                                            rng)
  return GenerateOutput(tokens=tokens, logprobs=logprobs, lengths=lengths), cache

