"""The Qwen2 decoder stack: attention, decoder layer, KV cache, and the two ways to run the layers.

Unscanned (the default), the model holds one `DecoderLayer` per layer (`layers.{i}.…`) and runs
them in a Python loop. Scanned (`scan_layers=True`), it holds a single `DecoderLayer` whose
parameters carry a leading "layers" axis (`layers.…`, shape (L, …)) and runs them with one
`jax.lax.scan`: the compiled program holds one layer body, so compile time and (with remat)
activation memory no longer grow with depth. Both compute the same function; a scanned model
initialised from the same seed has the same parameters, stacked.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx, struct

from veripo_jax.models.qwen2_5_vl.config import TextConfig
from veripo_jax.models.qwen2_5_vl.layers import (Dtype, Linear, RMSNorm, SwiGLU, apply_rotary,
                                                 attention, cached_attention)
from veripo_jax.parallel.remat import REMAT_POLICIES
from veripo_jax.parallel.sharding import constrain

def _each(fn, *trees):
  """`fn` over the cache's per-layer arrays (a tuple), or over the one stacked array."""
  return tuple(map(fn, *trees)) if isinstance(trees[0], tuple) else fn(*trees)


@struct.dataclass
class KVCache:
  """Static-size decode cache. Keys are stored post-RoPE; `valid` marks slots of real tokens.

  Keys are kept transposed, (B, kv_heads, head_dim, S), and values as (B, kv_heads, S,
  head_dim): both attention dots then read the cache in the order a plain matmul wants, so
  XLA copies no cache-sized tensor per decode step (the (B, S, kv_heads, head_dim) layout cost
  about a quarter of a CPU decode step in transposes).

  `keys` / `values` are a tuple of per-layer arrays (unscanned layers) or one stacked array
  with the layer axis second, (B, L, kv_heads, head_dim, S) / (B, L, kv_heads, S, head_dim)
  (scanned layers: the scan carries the whole cache and writes layer i's new tokens in place).
  The batch axis leads in both layouts, so every method below, and a caller that vmaps over a
  per-slot cache's rows, treat them alike.
  """
  KEY_AXES = ("batch", "kv_heads", "head_dim", "cache_length")
  VALUE_AXES = ("batch", "kv_heads", "cache_length", "head_dim")
  STACKED_KEY_AXES = ("batch", "layers", "kv_heads", "head_dim", "cache_length")
  STACKED_VALUE_AXES = ("batch", "layers", "kv_heads", "cache_length", "head_dim")

  keys: tuple[jax.Array, ...] | jax.Array     # per layer (B, kv, hd, S), or (B, L, kv, hd, S)
  values: tuple[jax.Array, ...] | jax.Array   # per layer (B, kv, S, hd), or (B, L, kv, S, hd)
  valid: jax.Array                            # (B, S) bool
  index: jax.Array                            # () int32, next slot to write

  @staticmethod
  def shapes(cfg: TextConfig, batch: int, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(key shape, value shape) of one layer."""
    kv, hd = cfg.num_key_value_heads, cfg.head_dim
    return (batch, kv, hd, length), (batch, kv, length, hd)

  @classmethod
  def init(cls, cfg: TextConfig, batch: int, length: int, dtype: Dtype,
           stacked: bool = False) -> "KVCache":
    key_shape, value_shape = cls.shapes(cfg, batch, length)
    n = cfg.num_hidden_layers
    if stacked:
      zeros = lambda shape: jnp.zeros(shape[:1] + (n,) + shape[1:], dtype)
    else:
      zeros = lambda shape: tuple(jnp.zeros(shape, dtype) for _ in range(n))
    return cls(keys=zeros(key_shape), values=zeros(value_shape),
               valid=jnp.zeros((batch, length), bool), index=jnp.zeros((), jnp.int32))

  @property
  def stacked(self) -> bool:
    return not isinstance(self.keys, tuple)

  @property
  def max_length(self) -> int:
    return self.valid.shape[1]

  def repeat(self, n: int) -> "KVCache":
    """Each row repeated n times (rows b*n .. b*n+n-1 copy row b): forks a prefill for n samples."""
    rep = lambda a: jnp.repeat(a, n, axis=0)
    return self.replace(keys=_each(rep, self.keys), values=_each(rep, self.values),
                        valid=rep(self.valid))

  @classmethod
  def axes(cls, cfg: TextConfig, per_slot: bool = False, stacked: bool = False) -> "KVCache":
    """Logical axes of each array (`per_slot`: the serving cache, one write index a row)."""
    if stacked:
      keys, values = cls.STACKED_KEY_AXES, cls.STACKED_VALUE_AXES
    else:
      n = cfg.num_hidden_layers
      keys, values = (cls.KEY_AXES,) * n, (cls.VALUE_AXES,) * n
    return cls(keys=keys, values=values, valid=("batch", "cache_length"),
               index=("batch",) if per_slot else ())

  def per_slot(self) -> "KVCache":
    """The serving layout: each row (a decode slot) with its own write index."""
    return self.replace(index=jnp.zeros((self.valid.shape[0],), jnp.int32))

  def insert(self, slot: jax.Array, row: "KVCache") -> "KVCache":
    """A per-slot cache with the one-row cache `row` (possibly shorter) written at `slot`."""
    def put(dst, src):
      return jax.lax.dynamic_update_slice(dst, src.astype(dst.dtype),
                                          (slot,) + (0,) * (dst.ndim - 1))
    valid = jnp.zeros((1, self.max_length), bool).at[:, :row.max_length].set(row.valid)
    return KVCache(keys=_each(put, self.keys, row.keys), values=_each(put, self.values, row.values),
                   valid=put(self.valid, valid), index=self.index.at[slot].set(row.index))

  def expand(self) -> "KVCache":
    """A vmapped per-slot row as a batch of one (what `decode_step` takes)."""
    one = lambda a: a[None]
    return self.replace(keys=_each(one, self.keys), values=_each(one, self.values),
                        valid=one(self.valid))

  def squeeze(self) -> "KVCache":
    """The inverse of `expand`."""
    first = lambda a: a[0]
    return self.replace(keys=_each(first, self.keys), values=_each(first, self.values),
                        valid=first(self.valid))


class TextAttention(nnx.Module):

  def __init__(self, cfg: TextConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs,
               implementation: str | None = None):
    self.cfg = cfg
    self.implementation = implementation
    q_dim, kv_dim = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.q_proj = Linear(cfg.hidden_size, q_dim, use_bias=True, axes=("embed", "heads"), **kw)
    self.k_proj = Linear(cfg.hidden_size, kv_dim, use_bias=True, axes=("embed", "kv_heads"), **kw)
    self.v_proj = Linear(cfg.hidden_size, kv_dim, use_bias=True, axes=("embed", "kv_heads"), **kw)
    self.o_proj = Linear(q_dim, cfg.hidden_size, use_bias=False, axes=("heads", "embed"), **kw)

  def __call__(self, x, cos, sin, mask, cache_kv=None, index=None, layer=None):
    """`cache_kv`: this layer's (keys, values), or with `layer` (an int32 scalar) the stacked
    cache of all layers, of which layer `layer` is written and read."""
    b, l, _ = x.shape
    c = self.cfg
    q = apply_rotary(self.q_proj(x).reshape(b, l, c.num_attention_heads, c.head_dim), cos, sin)
    k = apply_rotary(self.k_proj(x).reshape(b, l, c.num_key_value_heads, c.head_dim), cos, sin)
    v = self.v_proj(x).reshape(b, l, c.num_key_value_heads, c.head_dim)
    if cache_kv is None:
      out = attention(q, k, v, mask, self.implementation)
    elif layer is None:
      ck, cv = cache_kv
      k = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype),
                                       (0, 0, 0, index))
      v = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype),
                                       (0, 0, index, 0))
      cache_kv = (constrain(k, KVCache.KEY_AXES), constrain(v, KVCache.VALUE_AXES))
      out = cached_attention(q, *(c.astype(q.dtype) for c in cache_kv), mask, self.implementation)
    else:
      # Only the new tokens are written into the stacked cache (in place in the scan's carry);
      # attention then reads this layer's slice.
      ck, cv = cache_kv
      ck = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 3, 1)[:, None].astype(ck.dtype),
                                        (0, layer, 0, 0, index))
      cv = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3)[:, None].astype(cv.dtype),
                                        (0, layer, 0, index, 0))
      cache_kv = (constrain(ck, KVCache.STACKED_KEY_AXES),
                  constrain(cv, KVCache.STACKED_VALUE_AXES))
      k = constrain(jax.lax.dynamic_index_in_dim(ck, layer, 1, keepdims=False), KVCache.KEY_AXES)
      v = constrain(jax.lax.dynamic_index_in_dim(cv, layer, 1, keepdims=False),
                    KVCache.VALUE_AXES)
      out = cached_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, self.implementation)
    return self.o_proj(out.reshape(b, l, -1)), cache_kv


class DecoderLayer(nnx.Module):

  def __init__(self, cfg: TextConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs,
               implementation: str | None = None):
    norm = dict(eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.input_layernorm = RMSNorm(cfg.hidden_size, **norm)
    self.post_attention_layernorm = RMSNorm(cfg.hidden_size, **norm)
    self.self_attn = TextAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                   implementation=implementation)
    self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, use_bias=False, dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, cos, sin, mask, cache_kv=None, index=None, layer=None):
    a, cache_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv, index, layer)
    x = x + a
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, ("batch", "length", "embed")), cache_kv


# -------------------------------------------------------------------------------------------------
# The stack.

def stack_layers(layers: Sequence[DecoderLayer]) -> DecoderLayer:
  """One `DecoderLayer` whose every parameter is the layers' parameters stacked on a leading
  axis (logical axis "layers")."""
  graphdef, first = nnx.split(layers[0])
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), first, *(nnx.state(m) for m in layers[1:]))
  module = nnx.merge(graphdef, stacked)
  for _, var in nnx.to_flat_state(nnx.state(module)):
    var.set_metadata("logical_axes", ("layers",) + tuple(var.get_metadata()["logical_axes"]))
  return module


def is_stacked(layers) -> bool:
  return isinstance(layers, DecoderLayer)


def run_layers(layers, x, cos, sin, mask, *, remat: bool = False,
               remat_policy: str = "nothing_saveable") -> jax.Array:
  """The training path: x (B, L, D) through every layer, no cache.

  `remat` recomputes each layer's activations in the backward pass, keeping what
  `remat_policy` allows ("none": keeps everything, i.e. no recomputation).
  """
  policy = REMAT_POLICIES[remat_policy]
  remat = remat and remat_policy != "none"
  if is_stacked(layers):
    graphdef, params = nnx.split(layers)

    def body(y, p):
      return nnx.merge(graphdef, p)(y, cos, sin, mask)[0], None
    if remat:
      body = jax.checkpoint(body, policy=policy, prevent_cse=False)
    return jax.lax.scan(body, x, params)[0]
  for layer in layers:
    if remat:
      x = nnx.remat(lambda lyr, y: lyr(y, cos, sin, mask)[0], policy=policy)(layer, x)
    else:
      x, _ = layer(x, cos, sin, mask)
  return x


def run_layers_cached(layers, x, cos, sin, mask, keys, values, index
                      ) -> tuple[jax.Array, tuple[jax.Array, ...] | jax.Array,
                                 tuple[jax.Array, ...] | jax.Array]:
  """The cache path: x through every layer, each appending its keys/values at `index`."""
  if is_stacked(layers):
    graphdef, params = nnx.split(layers)

    def body(carry, xs):
      y, ck, cv = carry
      p, i = xs
      y, (ck, cv) = nnx.merge(graphdef, p)(y, cos, sin, mask, (ck, cv), index, i)
      return (y, ck, cv), None
    layer_ids = jnp.arange(keys.shape[1], dtype=jnp.int32)
    return jax.lax.scan(body, (x, keys, values), (params, layer_ids))[0]
  new_keys, new_values = [], []
  for layer, ck, cv in zip(layers, keys, values):
    x, (k, v) = layer(x, cos, sin, mask, (ck, cv), index)
    new_keys.append(k)
    new_values.append(v)
  return x, tuple(new_keys), tuple(new_values)
