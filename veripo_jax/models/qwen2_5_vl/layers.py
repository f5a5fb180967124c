"""Building blocks shared by the vision tower and the text decoder.

Every parameter carries `logical_axes` metadata (see `veripo_jax.parallel.sharding`). Numerics
follow the porting spec §8: RMSNorm statistics in fp32, cast back to the input dtype before the
weight multiply; softmax in fp32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from veripo_jax.models import attention as attn

Dtype = jnp.dtype
_INIT = nnx.initializers.normal(0.02)


class Linear(nnx.Module):
  """y = x @ kernel (+ bias); kernel is (in, out) like the spec's Flax layout."""

  def __init__(self, in_features: int, out_features: int, *, use_bias: bool,
               axes: tuple[str | None, str | None], dtype: Dtype, param_dtype: Dtype,
               rngs: nnx.Rngs):
    self.dtype = dtype
    self.kernel = nnx.Param(_INIT(rngs.params(), (in_features, out_features), param_dtype),
                            logical_axes=axes)
    self.bias = (nnx.Param(jnp.zeros((out_features,), param_dtype), logical_axes=axes[1:])
                 if use_bias else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.dot(x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, *, eps: float, dtype: Dtype, param_dtype: Dtype):
    self.eps = eps
    self.dtype = dtype
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype), logical_axes=("norm",))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(self.dtype) * normed.astype(self.dtype)


class SwiGLU(nnx.Module):
  """down(silu(gate(x)) * up(x)); the ViT MLP has biases, the LLM MLP does not."""

  def __init__(self, dim: int, hidden: int, *, use_bias: bool, dtype: Dtype,
               param_dtype: Dtype, rngs: nnx.Rngs):
    kw = dict(use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.gate_proj = Linear(dim, hidden, axes=("embed", "mlp"), **kw)
    self.up_proj = Linear(dim, hidden, axes=("embed", "mlp"), **kw)
    self.down_proj = Linear(hidden, dim, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


def rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """x: (..., heads, head_dim); cos/sin broadcast over the heads axis."""
  return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]


def inverse_frequencies(dim: int, theta: float) -> jax.Array:
  """1 / theta^(2i/dim) for i < dim/2, in fp32 as transformers computes it."""
  return 1.0 / (theta ** (jnp.arange(0, dim, 2, dtype=jnp.float32) / dim))


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask,
              implementation: str | None = None) -> jax.Array:
  """Scaled dot-product attention, q (B, Tq, heads, hd), k/v (B, Tk, kv_heads, hd).

  `mask`: a `SelfAttentionMask` (the decoder's causal / padding / branch mask), a boolean array
  broadcastable to (B, 1, Tq, Tk), or None. GQA is native (k/v may have fewer heads). Scores
  accumulate in fp32 and the softmax is fp32; a fully masked query row yields a finite result
  (on the XLA path the mean of the values; see `veripo_jax.models.attention`). `implementation`
  picks the kernel: "xla", "splash", "cudnn" or "auto"/None (by platform).
  """
  return attn.attention(q, k, v, mask, implementation)


def cached_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                     implementation: str | None = None) -> jax.Array:
  """Attention of q (B, L, heads, hd) over a decode cache: k (B, kv_heads, hd, S) and
  v (B, kv_heads, S, hd).

  Same numerics as `attention` (GQA, fp32 scores and softmax, a fully masked row finite);
  `mask` broadcasts to (B, 1, L, S). A decode step (and any L below the kernels' minimum)
  runs here on XLA, reading the cache in place; a prefill of L >= `KERNEL_MIN_QUERIES` tokens
  goes to the `implementation`'s kernel (with the cache transposed to (B, S, kv_heads, hd)).
  """
  if q.shape[1] >= attn.KERNEL_MIN_QUERIES and attn.resolve_implementation(implementation) != "xla":
    return attn.attention(q, k.transpose(0, 3, 1, 2), v.transpose(0, 2, 1, 3), mask,
                          implementation)
  b, l, h, d = q.shape
  kv = k.shape[1]
  qg = q.reshape(b, l, kv, h // kv, d).transpose(0, 2, 3, 1, 4)            # (B, kv, g, L, hd)
  scores = jnp.einsum("bkgld,bkds->bkgls", qg, k, preferred_element_type=jnp.float32)
  scores = scores * (1.0 / d ** 0.5)
  scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum("bkgls,bksd->bkgld", probs, v)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, l, h, d)
