"""A JetStream (0.2.2) Engine over our KV-cache decoder, text-only: the verifier's judge.

The model is a text-only Qwen2 / Qwen2.5 checkpoint or the language model of a Qwen2.5-VL one.

Each decode slot owns one cache row with its own write index (requests join at different generate
steps), so `generate` runs the model's `decode_step` vmapped over slots. A prompt is left-aligned
to the end of its padded bucket, exactly like a left-padded row of `inference.generate`, so the
server reproduces its greedy tokens. The server sends and receives token ids only.

The engine can be built over an abstract model (`nnx.eval_shape`, parameters as
`ShapeDtypeStruct`s with shardings) and a mesh: each jitted piece's `*_call` method gives
(jitted function, arguments) from the same host-side preparation the engine methods use, which
`veripo_jax.compile_check` lowers and compiles ahead of time.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from veripo_jax.inference.sampling import SamplingParams, next_token
from veripo_jax.models import CausalLM, get_family
from veripo_jax.parallel.sharding import (DEFAULT_RULES, LogicalRules, activation_sharding,
                                          is_logical_axes, logical_to_spec, make_mesh)
from veripo_jax.serving.compat import check_max_prefill_length, jetstream

_js = jetstream()

# JetStream 0.2.2 prepends `bos_id` to every request without a session_cache; Qwen has no BOS, so
# the tokenizer reports this sentinel and `prefill` drops it.
NO_BOS = -1


@struct.dataclass
class Prefix:
  """One prefilled prompt, waiting for a decode slot."""
  logits: jax.Array     # (1, V) fp32 next-token logits after the prompt
  cache: Any            # batch 1, length = the padded bucket; the prompt ends at the last slot
  position: jax.Array   # (1,) int32 rope position of the first generated token


@struct.dataclass
class DecodeState:
  """All slots; the cache's `index` is per slot (slots,) here, not the usual scalar."""
  logits: jax.Array     # (slots, V) fp32: the next token of each slot is sampled from these
  cache: Any            # (slots, max_prefill_length + max_decode_length, ...)
  positions: jax.Array  # (slots,) int32 rope position of the next token
  lengths: jax.Array    # (slots,) int32 tokens generated since insert
  rng: jax.Array


class IdTokenizer(_js.tokenizer_api.Tokenizer):
  """Ids in, ids out: JetStream detokenizes one token at a time, which mangles byte-level BPE,
  so clients tokenize and detokenize themselves (the server rejects text requests)."""

  def __init__(self, stop_token_ids: Sequence[int], pad_id: int):
    self._stop = frozenset(int(t) for t in stop_token_ids)
    self._pad = int(pad_id)

  def encode(self, s, **kwargs):
    raise NotImplementedError("this engine takes token ids (token_content), not text")

  def decode(self, token_ids, **kwargs):
    raise NotImplementedError("this engine returns token ids; detokenize on the client")

  @property
  def pad_id(self) -> int:
    return self._pad

  @property
  def eos_id(self) -> int:
    return min(self._stop)

  @property
  def bos_id(self) -> int:
    return NO_BOS

  @property
  def stop_tokens(self) -> set[int]:
    return set(self._stop)


class QwenEngine(_js.engine_api.Engine):
  """Interleaved prefill + generate on one mesh; `samples_per_slot` is 1.

  A request gets at most max_prefill_length + max_decode_length - bucket + 1 tokens (bucket: its
  padded prompt length): once its cache row is full the slot's tokens are marked invalid, which
  ends the request. Prompts longer than `max_prefill_length` keep their last
  `max_prefill_length` tokens (JetStream's truncation).
  """

  def __init__(self, model: CausalLM, *, max_concurrent_decodes: int = 8,
               max_prefill_length: int = 1024, max_decode_length: int = 256,
               stop_token_ids: Sequence[int] | None = None, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, seed: int = 0, mesh: Mesh | None = None,
               rules: LogicalRules = DEFAULT_RULES):
    if max_concurrent_decodes < 1 or max_decode_length < 1:
      raise ValueError("max_concurrent_decodes and max_decode_length must be >= 1, got "
                       f"{max_concurrent_decodes} and {max_decode_length}")
    cfg = model.config
    self.config = cfg
    self._slots = max_concurrent_decodes
    self._max_prefill = check_max_prefill_length(max_prefill_length)
    self._cache_length = max_prefill_length + max_decode_length
    self._stop = tuple(stop_token_ids if stop_token_ids is not None else
                       (cfg.eos_token_id, cfg.pad_token_id))
    if not self._stop:
      raise ValueError("stop_token_ids must not be empty")
    self._model = model
    graphdef, self._params = nnx.split(model)
    if mesh is None:
      device = next(iter(jax.tree.leaves(self._params)[0].devices()))
      self._mesh = make_mesh(1, 1, 1, devices=[device])
    else:
      self._mesh = mesh
    rules = tuple(rules)
    self._prefix_shardings = self._prefix_sharding_tree(rules)
    self._state_shardings = self._state_sharding_tree(rules)
    replicated = NamedSharding(self._mesh, P())
    sampling = SamplingParams(temperature, top_p, top_k)
    self._prefill_fn = jax.jit(
        functools.partial(_prefill, graphdef, mesh=mesh, rules=rules),
        out_shardings=self._prefix_shardings)
    self._insert_fn = jax.jit(_insert, out_shardings=self._state_shardings, donate_argnums=(1,))
    self._generate_fn = jax.jit(functools.partial(_generate, graphdef, sampling=sampling),
                                out_shardings=(self._state_shardings, replicated),
                                donate_argnums=(1,))
    self._init_fn = jax.jit(functools.partial(
        _init_state, graphdef, self._slots, self._cache_length, seed),
        out_shardings=self._state_shardings)

  @classmethod
  def from_checkpoint(cls, path: str | os.PathLike, *, dtype=jnp.float32, mesh: Mesh | None = None,
                      rules: LogicalRules = DEFAULT_RULES, family: str = "qwen2_5_vl",
                      **kwargs) -> "QwenEngine":
    """Any checkpoint the model family reads; only the language model is used."""
    model = get_family(family).load(path, dtype=dtype, mesh=mesh, rules=rules)
    return cls(model, mesh=mesh, rules=rules, **kwargs)

  # --- shardings -------------------------------------------------------------------------------

  def _sharding(self, axes, shape, rules) -> NamedSharding:
    return NamedSharding(self._mesh, logical_to_spec(axes, rules, shape, self._mesh))

  def _cache_shardings(self, rules, batch: int, length: int, *, per_slot: bool,
                       split=lambda axis: True):
    """The model's cache layout sharded by its logical axes (those `split` keeps)."""
    def layout():
      cache = self._model.init_cache(batch, length)
      return cache.per_slot() if per_slot else cache
    abstract = jax.eval_shape(layout)        # shapes only: no cache is allocated
    return jax.tree.map(
        lambda axes, a: self._sharding(tuple(x if split(x) else None for x in axes), a.shape,
                                       rules),
        self._model.cache_axes(per_slot), abstract, is_leaf=is_logical_axes)

  def _prefix_sharding_tree(self, rules) -> Prefix:
    """Prefix lengths vary by bucket, so only the head axes are split."""
    replicated = NamedSharding(self._mesh, P())
    cache = self._cache_shardings(rules, 1, 1, per_slot=False,
                                  split=lambda axis: axis not in ("batch", "cache_length"))
    return Prefix(logits=self._sharding((None, "vocab"), (1, self.config.vocab_size), rules),
                  cache=cache, position=replicated)

  def _state_sharding_tree(self, rules) -> DecodeState:
    n, s = self._slots, self._cache_length
    per_slot = self._sharding(("batch",), (n,), rules)
    return DecodeState(
        logits=self._sharding(("batch", "vocab"), (n, self.config.vocab_size), rules),
        cache=self._cache_shardings(rules, n, s, per_slot=True),
        positions=per_slot, lengths=per_slot, rng=NamedSharding(self._mesh, P()))

  # --- engine_api.Engine -----------------------------------------------------------------------

  def load_params(self, *args, **kwargs) -> nnx.State:
    return self._params

  def prompt_problem(self, token_ids: Sequence[int]) -> str | None:
    """Why a prompt cannot be served (an error in an orchestrator thread kills the process)."""
    if not len(token_ids):
      return "empty prompt"
    ids = np.asarray(token_ids, np.int64)
    vocab = self.config.vocab_size
    if ids.min() < 0 or ids.max() >= vocab:
      return f"token ids must be in [0, {vocab}), got [{ids.min()}, {ids.max()}]"
    if np.isin(ids, self.config.media_token_ids).any():
      return "image/video placeholder tokens are not supported: the judge is text-only"
    return None

  def prefill(self, *, params: nnx.State, existing_prefix: Prefix | None = None,
              padded_tokens, true_length: int) -> Prefix:
    """Right-padded tokens from JetStream -> the prompt left-padded in the same bucket."""
    if existing_prefix is not None:
      raise NotImplementedError("continuing a prefix (session_cache) is not supported")
    fn, args = self.prefill_call(params, padded_tokens, true_length)
    return fn(*args)

  def prefill_call(self, params: nnx.State, padded_tokens, true_length: int):
    """(jitted function, arguments) of `prefill`: the host-side preparation of the prompt."""
    tokens = np.asarray(padded_tokens).astype(np.int64)
    bucket = tokens.shape[0]
    n = min(int(true_length), bucket)         # over-long prompts: JetStream kept the last tokens
    real = tokens[1:n] if n and tokens[0] == NO_BOS else tokens[:n]
    ids = np.full((1, bucket), self.config.pad_token_id, np.int32)
    mask = np.zeros((1, bucket), bool)
    ids[0, bucket - len(real):] = real
    mask[0, bucket - len(real):] = True
    inputs, next_pos = self._model.prepare({"input_ids": ids, "attention_mask": mask})
    return self._prefill_fn, (params, inputs, np.asarray(next_pos, np.int32))

  def insert(self, prefix: Prefix, decode_state: DecodeState, slot: int) -> DecodeState:
    # The orchestrator deletes the prefix afterwards: the new state shares no buffer with it.
    fn, args = self.insert_call(prefix, decode_state, slot)
    return fn(*args)

  def insert_call(self, prefix: Prefix, decode_state: DecodeState, slot: int):
    """(jitted function, arguments) of `insert`."""
    return self._insert_fn, (prefix, decode_state, np.int32(slot))

  def generate(self, params: nnx.State, decode_state: DecodeState):
    fn, args = self.generate_call(params, decode_state)
    decode_state, data = fn(*args)
    return decode_state, _js.engine_api.ResultTokens(
        data=data, tokens_idx=(0, 1), valid_idx=(1, 2), length_idx=(2, 3), samples_per_slot=1)

  def get_prefix_destination_sharding(self) -> Prefix:
    return self._prefix_shardings

  def get_tokenizer(self):
    return _js.tokenizer_pb2.TokenizerParameters(path="token-ids")

  def build_tokenizer(self, metadata) -> IdTokenizer:
    return IdTokenizer(self._stop, self.config.pad_token_id)

  def generate_call(self, params: nnx.State, decode_state: DecodeState):
    """(jitted function, arguments) of `generate`'s step."""
    return self._generate_fn, (params, decode_state)

  def init_decode_state(self, *args, **kwargs) -> DecodeState:
    fn, args = self.init_call()
    return fn(*args)

  def init_call(self):
    """(jitted function, arguments) of `init_decode_state`."""
    return self._init_fn, (self._params,)

  @property
  def max_concurrent_decodes(self) -> int:
    return self._slots

  @property
  def samples_per_slot(self) -> int:
    return 1

  @property
  def max_prefill_length(self) -> int:
    return self._max_prefill

  @property
  def mesh(self) -> Mesh:
    return self._mesh

  @property
  def colocated_cpus(self) -> None:
    """JetStream 0.2.2 never reads it."""
    return None


# --- jitted pieces -----------------------------------------------------------------------------


def _prefill(graphdef, params, inputs, position, *, mesh, rules) -> Prefix:
  with activation_sharding(mesh, rules):
    model = nnx.merge(graphdef, params)
    cache = model.init_cache(1, inputs.input_ids.shape[1])
    logits, cache = model.prefill(inputs, cache)
  return Prefix(logits=logits.astype(jnp.float32), cache=cache, position=position)


def _insert(prefix: Prefix, state: DecodeState, slot) -> DecodeState:
  def put(dst, src):
    return jax.lax.dynamic_update_slice(dst, src.astype(dst.dtype), (slot,) + (0,) * (dst.ndim - 1))

  cache = state.cache.insert(slot, prefix.cache)
  return state.replace(cache=cache, logits=put(state.logits, prefix.logits),
                       positions=put(state.positions, prefix.position),
                       lengths=state.lengths.at[slot].set(0))


def _generate(graphdef, params, state: DecodeState, *, sampling: SamplingParams
              ) -> tuple[DecodeState, jax.Array]:
  """One token for every slot -> data (slots, 3): token, valid, length (ResultTokens layout).

  A token is valid while the logits it comes from saw an in-bounds cache write (index <= S):
  afterwards the clamped write corrupts the row, and the invalid flag ends the request.
  """
  rng, key = jax.random.split(state.rng)
  token = next_token(state.logits, key, sampling)
  valid = state.cache.index <= state.cache.max_length
  lengths = state.lengths + 1

  def step(tok, pos, row):
    logits, cache = nnx.merge(graphdef, params).decode_step(tok[None], pos[None], row.expand())
    return logits[0].astype(jnp.float32), cache.squeeze()

  logits, cache = jax.vmap(step)(token, state.positions, state.cache)
  data = jnp.stack([token, valid.astype(jnp.int32), lengths], axis=1)
  return DecodeState(logits=logits, cache=cache, positions=state.positions + 1, lengths=lengths,
                     rng=rng), data


def _init_state(graphdef, slots, length, seed, params) -> DecodeState:
  model = nnx.merge(graphdef, params)         # for its cache layout; no parameter is read
  cache = model.init_cache(slots, length).per_slot()
  zeros = lambda: jnp.zeros((slots,), jnp.int32)
  return DecodeState(logits=jnp.zeros((slots, model.config.vocab_size), jnp.float32),
                     cache=cache, positions=zeros(), lengths=zeros(), rng=jax.random.key(seed))
