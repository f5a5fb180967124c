"""Qwen2.5-VL vision tower: patch embed, windowed ViT blocks with 2-D RoPE, PatchMerger."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from veripo_jax.models.qwen2_5_vl.config import VisionConfig
from veripo_jax.models.qwen2_5_vl.layers import (Dtype, Linear, RMSNorm, SwiGLU, apply_rotary,
                                                 attention, inverse_frequencies)
from veripo_jax.models.qwen2_5_vl.vision_index import Segments, VisionInputs
from veripo_jax.parallel.sharding import constrain


class VisionAttention(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs,
               implementation: str | None = None):
    self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
    self.implementation = implementation
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size, axes=("embed", "heads"), **kw)
    self.proj = Linear(cfg.hidden_size, cfg.hidden_size, axes=("heads", "embed"), **kw)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, seg: Segments) -> jax.Array:
    n = x.shape[0]
    qkv = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
    # Vision RoPE is applied in fp32, then cast back (spec §8).
    q = apply_rotary(q.astype(jnp.float32), cos, sin).astype(x.dtype)
    k = apply_rotary(k.astype(jnp.float32), cos, sin).astype(x.dtype)
    gather = lambda a: a[seg.gather]                           # (S, Lmax, heads, head_dim)
    mask = seg.valid[:, None, None, :]                         # keys of the same segment only
    out = attention(gather(q), gather(k), gather(v), mask, self.implementation)
    out = out.reshape(-1, self.num_heads * self.head_dim)[seg.scatter]
    return self.proj(out)


class VisionBlock(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs,
               implementation: str | None = None):
    norm = dict(eps=cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.norm1 = RMSNorm(cfg.hidden_size, **norm)
    self.norm2 = RMSNorm(cfg.hidden_size, **norm)
    self.attn = VisionAttention(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                                implementation=implementation)
    self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size, use_bias=True, dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, cos, sin, seg: Segments):
    x = x + self.attn(self.norm1(x), cos, sin, seg)
    return x + self.mlp(self.norm2(x))


class PatchMerger(nnx.Module):
  """RMSNorm, then each 2x2 block of patches (4 consecutive rows) -> one LLM token."""

  def __init__(self, cfg: VisionConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs):
    width = cfg.hidden_size * cfg.spatial_merge_size ** 2
    kw = dict(use_bias=True, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ln_q = RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps, dtype=dtype,
                        param_dtype=param_dtype)
    self.fc1 = Linear(width, width, axes=("embed", "mlp"), **kw)
    self.fc2 = Linear(width, cfg.out_hidden_size, axes=("mlp", "embed"), **kw)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = self.ln_q(x).reshape(-1, self.fc1.kernel.shape[0])
    return self.fc2(jax.nn.gelu(self.fc1(y), approximate=False))   # exact erf GELU


class VisionTower(nnx.Module):

  def __init__(self, cfg: VisionConfig, *, dtype: Dtype, param_dtype: Dtype, rngs: nnx.Rngs,
               implementation: str | None = None):
    self.cfg = cfg
    self.dtype = dtype
    # Conv3d with kernel == stride over pre-patchified rows is exactly a matmul.
    self.patch_embed = Linear(cfg.patch_dim, cfg.hidden_size, use_bias=False,
                              axes=("patch", "embed"), dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)
    self.blocks = nnx.List([
        VisionBlock(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
                    implementation=implementation) for _ in range(cfg.depth)])
    self.merger = PatchMerger(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def rotary(self, pos: jax.Array) -> tuple[jax.Array, jax.Array]:
    inv = inverse_frequencies(self.cfg.head_dim // 2, self.cfg.rope_theta)
    pos = pos.astype(jnp.float32)
    angle = jnp.concatenate([pos[:, :1] * inv, pos[:, 1:] * inv], axis=-1)
    emb = jnp.concatenate([angle, angle], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)

  def __call__(self, v: VisionInputs) -> jax.Array:
    """Returns merged-token features (N/4, out_hidden) in processor order."""
    m2 = self.cfg.spatial_merge_size ** 2
    x = self.patch_embed(v.pixel_values.astype(self.dtype))
    x = x.reshape(-1, m2, x.shape[-1])[v.window_order].reshape(-1, x.shape[-1])
    x = constrain(x, ("vision_tokens", "embed"))
    cos, sin = self.rotary(v.rotary_pos)
    full = set(self.cfg.fullatt_block_indexes)
    for i, block in enumerate(self.blocks):
      x = block(x, cos, sin, v.full if i in full else v.window)
    return self.merger(x)[v.restore_order]
