"""Qwen2.5-VL for conditional generation: Qwen2 decoder with M-RoPE over text + vision tokens.

`__call__` mirrors transformers (input_ids, attention_mask, pixel_values, image_grid_thw,
pixel_values_videos, video_grid_thw, second_per_grid_ts -> logits) and does the host-side index
work itself. Jitted code (training, decoding) calls `prepare_inputs` once on the host and then
`forward` / `prefill` / `decode_step`, which take only arrays. A config without vision
(`vision=None`) is a plain Qwen2ForCausalLM: no vision tower, text positions only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from veripo_jax.models.qwen2_5_vl.config import Qwen25VLConfig, TextConfig
from veripo_jax.models.qwen2_5_vl.layers import (Dtype, Linear, RMSNorm, SwiGLU, apply_rotary,
                                                 attention, cached_attention,
                                                 inverse_frequencies)
from veripo_jax.models.qwen2_5_vl.rope_index import get_rope_index, text_positions
from veripo_jax.models.qwen2_5_vl.vision import VisionTower
from veripo_jax.models.qwen2_5_vl.vision_index import VisionInputs, prepare_vision
from veripo_jax.parallel.sharding import constrain


@struct.dataclass
class ModelInputs:
  """Array-only model inputs (see `prepare_inputs`)."""
  input_ids: jax.Array        # (B, L) int32
  attention_mask: jax.Array   # (B, L) bool, False on padding
  position_ids: jax.Array     # (3, B, L) int32 M-RoPE positions
  feature_index: jax.Array    # (B, L) int32 row of the vision features for placeholders, else -1
  vision: VisionInputs | None = None
  # Precomputed vision-tower outputs (F, D) instead of `vision` (a frozen tower's features,
  # computed once per prompt batch and reused by every update on it).
  vision_features: jax.Array | None = None
  # (B, L) int32 branch of each column for prompt-shared training rows: 0 marks the shared
  # prefix every column sees; columns of branch k > 0 see the prefix and their own branch only,
  # so several responses to one prompt ride in one row without seeing each other.
  branch: jax.Array | None = None


def attention_mask_4d(inputs: ModelInputs) -> jax.Array:
  """(B, 1, L, L) bool: causal, real keys only, and within-branch when `inputs.branch` is set."""
  l = inputs.input_ids.shape[1]
  causal = jnp.tril(jnp.ones((l, l), bool))
  mask = inputs.attention_mask[:, None, :].astype(bool) & causal[None]
  if inputs.branch is not None:
    keys = inputs.branch[:, None, :]
    mask = mask & ((keys == 0) | (keys == inputs.branch[:, :, None]))
  return mask[:, None]


@struct.dataclass
class KVCache:
  """Static-size decode cache. Keys are stored post-RoPE; `valid` marks slots of real tokens.

  Keys are kept transposed, (B, kv_heads, head_dim, S), and values as (B, kv_heads, S,
  head_dim): both attention dots then read the cache in the order a plain matmul wants, so
  XLA copies no cache-sized tensor per decode step (the (B, S, kv_heads, head_dim) layout cost
  about a quarter of a CPU decode step in transposes).
  """
  KEY_AXES = ("batch", "kv_heads", "head_dim", "cache_length")
  VALUE_AXES = ("batch", "kv_heads", "cache_length", "head_dim")

  keys: tuple[jax.Array, ...]     # per layer (B, kv_heads, head_dim, S)
  values: tuple[jax.Array, ...]   # per layer (B, kv_heads, S, head_dim)
  valid: jax.Array                # (B, S) bool
  index: jax.Array                # () int32, next slot to write

  @staticmethod
  def shapes(cfg: TextConfig, batch: int, length: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(key shape, value shape) of one layer."""
    kv, hd = cfg.num_key_value_heads, cfg.head_dim
    return (batch, kv, hd, length), (batch, kv, length, hd)

  @classmethod
  def init(cls, cfg: TextConfig, batch: int, length: int, dtype: Dtype) -> "KVCache":
    key_shape, value_shape = cls.shapes(cfg, batch, length)
    zeros = lambda shape: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_hidden_layers))
    return cls(keys=zeros(key_shape), values=zeros(value_shape),
               valid=jnp.zeros((batch, length), bool), index=jnp.zeros((), jnp.int32))

  @property
  def max_length(self) -> int:
    return self.valid.shape[1]

  def repeat(self, n: int) -> "KVCache":
    """Each row repeated n times (rows b*n .. b*n+n-1 copy row b): forks a prefill for n samples."""
    rep = lambda a: jnp.repeat(a, n, axis=0)
    return self.replace(keys=tuple(map(rep, self.keys)), values=tuple(map(rep, self.values)),
                        valid=rep(self.valid))

  @classmethod
  def axes(cls, cfg: TextConfig, per_slot: bool = False) -> "KVCache":
    """Logical axes of each array (`per_slot`: the serving cache, one write index a row)."""
    n = cfg.num_hidden_layers
    return cls(keys=(cls.KEY_AXES,) * n, values=(cls.VALUE_AXES,) * n,
               valid=("batch", "cache_length"), index=("batch",) if per_slot else ())

  def per_slot(self) -> "KVCache":
    """The serving layout: each row (a decode slot) with its own write index."""
    return self.replace(index=jnp.zeros((self.valid.shape[0],), jnp.int32))

  def insert(self, slot: jax.Array, row: "KVCache") -> "KVCache":
    """A per-slot cache with the one-row cache `row` (possibly shorter) written at `slot`."""
    def put(dst, src):
      return jax.lax.dynamic_update_slice(dst, src.astype(dst.dtype),
                                          (slot,) + (0,) * (dst.ndim - 1))
    valid = jnp.zeros((1, self.max_length), bool).at[:, :row.max_length].set(row.valid)
    return KVCache(keys=tuple(map(put, self.keys, row.keys)),
                   values=tuple(map(put, self.values, row.values)),
                   valid=put(self.valid, valid), index=self.index.at[slot].set(row.index))

  def expand(self) -> "KVCache":
    """A vmapped per-slot row as a batch of one (what `decode_step` takes)."""
    one = lambda a: a[None]
    return self.replace(keys=tuple(map(one, self.keys)), values=tuple(map(one, self.values)),
                        valid=one(self.valid))

  def squeeze(self) -> "KVCache":
    """The inverse of `expand`."""
    first = lambda a: a[0]
    return self.replace(keys=tuple(map(first, self.keys)),
                        values=tuple(map(first, self.values)), valid=first(self.valid))


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

  def __call__(self, x, cos, sin, mask, cache_kv=None, index=None):
    b, l, _ = x.shape
    c = self.cfg
    q = apply_rotary(self.q_proj(x).reshape(b, l, c.num_attention_heads, c.head_dim), cos, sin)
    k = apply_rotary(self.k_proj(x).reshape(b, l, c.num_key_value_heads, c.head_dim), cos, sin)
    v = self.v_proj(x).reshape(b, l, c.num_key_value_heads, c.head_dim)
    if cache_kv is None:
      out = attention(q, k, v, mask, self.implementation)
    else:
      ck, cv = cache_kv
      k = jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype),
                                       (0, 0, 0, index))
      v = jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype),
                                       (0, 0, index, 0))
      cache_kv = (constrain(k, KVCache.KEY_AXES), constrain(v, KVCache.VALUE_AXES))
      out = cached_attention(q, *(c.astype(q.dtype) for c in cache_kv), mask)
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

  def __call__(self, x, cos, sin, mask, cache_kv=None, index=None):
    a, cache_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv, index)
    x = x + a
    x = x + self.mlp(self.post_attention_layernorm(x))
    return constrain(x, ("batch", "length", "embed")), cache_kv


class Qwen25VL(nnx.Module):
  """Qwen2_5_VLForConditionalGeneration, or Qwen2ForCausalLM when `config.vision` is None.

  Parameter names mirror the HF module tree.
  """

  def __init__(self, config: Qwen25VLConfig, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None,
               attention_implementation: str | None = None, rope_mode: str = "legacy"):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    t = config.text
    self.config = config
    self.dtype = dtype
    self.rope_mode = rope_mode
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.visual = (None if config.vision is None else
                   VisionTower(config.vision, implementation=attention_implementation, **kw))
    self.embed_tokens = nnx.Embed(t.vocab_size, t.hidden_size, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs,
                                  embedding_init=nnx.initializers.normal(0.02))
    self.embed_tokens.embedding.set_metadata("logical_axes", ("vocab", "embed"))
    self.layers = nnx.List([DecoderLayer(t, implementation=attention_implementation, **kw)
                            for _ in range(t.num_hidden_layers)])
    self.norm = RMSNorm(t.hidden_size, eps=t.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
    self.lm_head = (None if config.tie_word_embeddings else
                    Linear(t.hidden_size, t.vocab_size, use_bias=False, axes=("embed", "vocab"),
                           **kw))

  # --- pieces ------------------------------------------------------------------------------------

  def embed(self, inputs: ModelInputs) -> jax.Array:
    x = self.embed_tokens(inputs.input_ids).astype(self.dtype)
    feats = inputs.vision_features
    if feats is None and inputs.vision is not None:
      feats = self.visual(inputs.vision)
    if feats is not None:
      feats = feats.astype(x.dtype)
      idx = inputs.feature_index
      x = jnp.where((idx >= 0)[..., None], feats[jnp.maximum(idx, 0)], x)
    return constrain(x, ("batch", "length", "embed"))

  def rotary(self, position_ids: jax.Array) -> tuple[jax.Array, jax.Array]:
    """M-RoPE cos/sin (B, L, head_dim): frequency j takes the T, H or W position (mrope_section)."""
    t = self.config.text
    inv = inverse_frequencies(t.head_dim, t.rope_theta)                     # (hd/2,)
    freqs = position_ids.astype(jnp.float32)[..., None] * inv                # (3, B, L, hd/2)
    axis = np.repeat(np.arange(3), t.mrope_section)                          # (hd/2,)
    f = jnp.take_along_axis(freqs, jnp.asarray(axis)[None, None, None, :], axis=0)[0]
    emb = jnp.concatenate([f, f], axis=-1)
    return jnp.cos(emb).astype(self.dtype), jnp.sin(emb).astype(self.dtype)

  def logits(self, h: jax.Array) -> jax.Array:
    h = self.norm(h)
    if self.lm_head is None:
      out = jnp.dot(h, self.embed_tokens.embedding[...].astype(self.dtype).T)
    else:
      out = self.lm_head(h)
    return constrain(out, ("batch", "length", "vocab"))

  def hidden_states(self, inputs: ModelInputs, remat: bool = False) -> jax.Array:
    """Final-layer hidden states (before the last norm), no cache: the training path.

    `remat` recomputes each decoder layer's activations in the backward pass instead of
    storing them (memory for compute, per layer).
    """
    x = self.embed(inputs)
    cos, sin = self.rotary(inputs.position_ids)
    mask = attention_mask_4d(inputs)
    for layer in self.layers:
      if remat:
        x = nnx.remat(lambda lyr, y: lyr(y, cos, sin, mask)[0])(layer, x)
      else:
        x, _ = layer(x, cos, sin, mask)
    return x

  def forward(self, inputs: ModelInputs) -> jax.Array:
    """Logits (B, L, V) for array inputs."""
    return self.logits(self.hidden_states(inputs))

  def extend(self, x: jax.Array, position_ids: jax.Array, token_valid: jax.Array,
             cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Runs embeddings x (B, L, D) through the decoder, appending them to the cache at its index."""
    l = x.shape[1]
    valid = jax.lax.dynamic_update_slice(cache.valid, token_valid.astype(bool), (0, cache.index))
    slots = jnp.arange(cache.max_length)
    causal = slots[None, :] <= cache.index + jnp.arange(l)[:, None]          # (L, S)
    mask = valid[:, None, None, :] & causal[None, None]
    cos, sin = self.rotary(position_ids)
    keys, values = [], []
    for layer, ck, cv in zip(self.layers, cache.keys, cache.values):
      x, (k, v) = layer(x, cos, sin, mask, (ck, cv), cache.index)
      keys.append(k)
      values.append(v)
    return x, KVCache(keys=tuple(keys), values=tuple(values), valid=valid, index=cache.index + l)

  def prefill(self, inputs: ModelInputs, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Processes the prompt (vision included) into the cache; returns last-token logits (B, V)."""
    h, cache = self.extend(self.embed(inputs), inputs.position_ids, inputs.attention_mask, cache)
    return self.logits(h[:, -1:])[:, 0], cache

  def decode_step(self, tokens: jax.Array, positions: jax.Array,
                  cache: KVCache) -> tuple[jax.Array, KVCache]:
    """One token per row: tokens (B,), positions (B,) -> logits (B, V)."""
    x = self.embed_tokens(tokens[:, None]).astype(self.dtype)
    pos3 = jnp.broadcast_to(positions[None, :, None], (3, tokens.shape[0], 1))
    h, cache = self.extend(x, pos3, jnp.ones_like(tokens[:, None], bool), cache)
    return self.logits(h)[:, 0], cache

  # --- the CausalLM protocol (models.family) -----------------------------------------------------

  def prepare(self, batch, *, bucketed: bool = True) -> tuple[ModelInputs, np.ndarray]:
    return prepare_batch(self.config, batch, rope_mode=self.rope_mode, bucketed=bucketed)

  def init_cache(self, batch: int, length: int) -> KVCache:
    return KVCache.init(self.config.text, batch, length, self.dtype)

  def cache_axes(self, per_slot: bool = False) -> KVCache:
    return KVCache.axes(self.config.text, per_slot)

  def encode_media(self, media: VisionInputs) -> jax.Array:
    return self.visual(media)

  # --- transformers-style entry point ------------------------------------------------------------

  def __call__(self, input_ids, attention_mask=None, pixel_values=None, image_grid_thw=None,
               pixel_values_videos=None, video_grid_thw=None, second_per_grid_ts=None,
               position_ids=None) -> jax.Array:
    inputs, _ = prepare_inputs(
        self.config, input_ids, attention_mask, pixel_values=pixel_values,
        image_grid_thw=image_grid_thw, pixel_values_videos=pixel_values_videos,
        video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts,
        position_ids=position_ids, rope_mode=self.rope_mode)
    return _jit_forward(self, inputs)


@nnx.jit
def _jit_forward(model: Qwen25VL, inputs: ModelInputs) -> jax.Array:
  return model.forward(inputs)


_MEDIA_FIELDS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                 "second_per_grid_ts", "position_ids")


def prepare_batch(config: Qwen25VLConfig, batch, *, rope_mode: str = "legacy",
                  bucketed: bool = True) -> tuple[ModelInputs, np.ndarray]:
  """`prepare_inputs` of a processor-style batch (a mapping; absent media fields are None)."""
  return prepare_inputs(config, batch["input_ids"], batch.get("attention_mask"),
                        rope_mode=rope_mode, bucketed=bucketed,
                        **{k: batch.get(k) for k in _MEDIA_FIELDS})


def prepare_inputs(config: Qwen25VLConfig, input_ids, attention_mask=None, *,
                   pixel_values=None, image_grid_thw=None, pixel_values_videos=None,
                   video_grid_thw=None, second_per_grid_ts=None, position_ids=None,
                   rope_mode: str = "legacy", bucketed: bool = True
                   ) -> tuple[ModelInputs, np.ndarray]:
  """Host-side: M-RoPE positions, vision index tables, placeholder -> feature rows.

  Returns the inputs and `next_position (B,)`, the rope position of the first generated token.
  Images and videos go through the vision tower in one pass (features: images first, then
  videos, each in prompt order), which equals transformers' separate passes because no
  attention segment spans two items. A text-only config refuses images and videos.
  """
  ids = np.asarray(input_ids, np.int32)
  if ids.ndim != 2:
    raise ValueError(f"input_ids must be (batch, length), got shape {ids.shape}")
  mask = np.ones_like(ids, bool) if attention_mask is None else np.asarray(attention_mask, bool)
  if position_ids is not None:
    pos = np.asarray(position_ids, np.int32)
    pos = np.stack([pos] * 3) if pos.ndim == 2 else pos       # Qwen2's (B, L) positions
    next_pos = pos[:, :, -1].max(0) + 1
  elif config.vision is None:
    pos, next_pos = text_positions(mask)
  else:
    pos, next_pos = get_rope_index(
        ids, mask, image_grid_thw, video_grid_thw, second_per_grid_ts,
        image_token_id=config.image_token_id, video_token_id=config.video_token_id,
        spatial_merge_size=config.vision.spatial_merge_size,
        tokens_per_second=config.vision.tokens_per_second, mode=rope_mode)
  media = {"image": (pixel_values, image_grid_thw), "video": (pixel_values_videos, video_grid_thw)}
  if config.vision is None:
    given = [name for name, arrays in media.items()
             if any(a is not None and np.size(a) for a in arrays)]
    if given:
      raise ValueError(f"{' and '.join(given)} inputs given to a text-only model (a Qwen2 "
                       "checkpoint without a vision tower)")
    vision, feature_index = None, np.full(ids.shape, -1, np.int32)
  else:
    vision, feature_index = _vision_inputs(config, ids, mask, media, bucketed)
  inputs = ModelInputs(input_ids=ids, attention_mask=mask, position_ids=pos,
                       feature_index=feature_index, vision=vision)
  return inputs, next_pos


def _vision_inputs(config: Qwen25VLConfig, ids: np.ndarray, mask: np.ndarray, media: dict,
                   bucketed: bool) -> tuple[VisionInputs | None, np.ndarray]:
  """Vision index tables and the feature row of each placeholder token (-1 elsewhere)."""
  v = config.vision
  grids, pixels, feature_index = [], [], np.full(ids.shape, -1, np.int32)
  offset = 0
  for name, token in (("image", config.image_token_id), ("video", config.video_token_id)):
    pv, grid = media[name]
    placeholders = (ids == token) & mask
    n_tokens = int(placeholders.sum())
    if grid is None or len(np.asarray(grid)) == 0:
      if n_tokens:
        raise ValueError(f"{n_tokens} {name} placeholder tokens but no {name}_grid_thw given")
      continue
    if pv is None:
      raise ValueError(f"{name}_grid_thw given without its pixel values")
    grid = np.asarray(grid, np.int64).reshape(-1, 3)
    n_patches = int(grid.prod(-1).sum())
    n_feats = n_patches // v.spatial_merge_size ** 2
    if n_tokens != n_feats:
      raise ValueError(f"{name} features and {name} tokens do not match: tokens {n_tokens}, "
                       f"features {n_feats} (from {name}_grid_thw {grid.tolist()})")
    pv = np.asarray(pv, np.float32)
    if pv.ndim != 2 or pv.shape[0] < n_patches:
      raise ValueError(f"{name} pixel values have shape {pv.shape}; {name}_grid_thw "
                       f"{grid.tolist()} needs {n_patches} rows")
    feature_index[placeholders] = offset + np.arange(n_tokens, dtype=np.int32)
    offset += n_feats
    grids.append(grid)
    pixels.append(pv[:n_patches])             # rows past the grids are a loader's padding
  vision = (prepare_vision(np.concatenate(pixels), np.concatenate(grids), v, bucketed=bucketed)
            if grids else None)
  return vision, feature_index
