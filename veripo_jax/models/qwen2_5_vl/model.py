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

from veripo_jax.models.attention import SelfAttentionMask, check_implementation
from veripo_jax.models.qwen2_5_vl.config import Qwen25VLConfig
from veripo_jax.models.qwen2_5_vl.decoder import (DecoderLayer, KVCache, run_layers,
                                                  run_layers_cached, stack_layers)
from veripo_jax.models.qwen2_5_vl.layers import Dtype, Linear, RMSNorm, inverse_frequencies
from veripo_jax.models.qwen2_5_vl.rope_index import get_rope_index, text_positions
from veripo_jax.models.qwen2_5_vl.vision import VisionTower
from veripo_jax.models.qwen2_5_vl.vision_index import VisionInputs, prepare_vision
from veripo_jax.parallel.remat import check_remat_policy
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


class Qwen25VL(nnx.Module):
  """Qwen2_5_VLForConditionalGeneration, or Qwen2ForCausalLM when `config.vision` is None.

  Parameter names mirror the HF module tree. `scan_layers` stacks the decoder layers'
  parameters on a leading "layers" axis (`layers.…` instead of `layers.{i}.…`) and runs them
  in one `lax.scan` (see `decoder`); the KV cache is then stacked too. `remat_policy` is what
  `hidden_states(remat=True)` keeps of each layer's forward (`parallel.remat.REMAT_POLICIES`).
  """

  def __init__(self, config: Qwen25VLConfig, *, dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs | None = None,
               attention_implementation: str | None = None, rope_mode: str = "legacy",
               scan_layers: bool = False, remat_policy: str = "nothing_saveable"):
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    t = config.text
    self.config = config
    self.dtype = dtype
    self.rope_mode = rope_mode
    self.scan_layers = bool(scan_layers)
    self.remat_policy = check_remat_policy(remat_policy)
    attention_implementation = check_implementation(attention_implementation)
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.visual = (None if config.vision is None else
                   VisionTower(config.vision, implementation=attention_implementation, **kw))
    self.embed_tokens = nnx.Embed(t.vocab_size, t.hidden_size, dtype=dtype,
                                  param_dtype=param_dtype, rngs=rngs,
                                  embedding_init=nnx.initializers.normal(0.02))
    self.embed_tokens.embedding.set_metadata("logical_axes", ("vocab", "embed"))
    layers = [DecoderLayer(t, implementation=attention_implementation, **kw)
              for _ in range(t.num_hidden_layers)]
    self.layers = stack_layers(layers) if self.scan_layers else nnx.List(layers)
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
    storing them (memory for compute, per layer), keeping what `remat_policy` allows.
    """
    x = self.embed(inputs)
    cos, sin = self.rotary(inputs.position_ids)
    # Causal, real keys only, within-branch: kernels read it as segments, XLA as `dense()`.
    mask = SelfAttentionMask(inputs.attention_mask.astype(bool), inputs.branch)
    return run_layers(self.layers, x, cos, sin, mask, remat=remat,
                      remat_policy=self.remat_policy)

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
    if cache.stacked != self.scan_layers:
      raise ValueError(f"a {'stacked' if cache.stacked else 'per-layer'} KV cache given to a "
                       f"model with scan_layers={self.scan_layers} (use model.init_cache)")
    x, keys, values = run_layers_cached(self.layers, x, cos, sin, mask, cache.keys,
                                        cache.values, cache.index)
    return x, KVCache(keys=keys, values=values, valid=valid, index=cache.index + l)

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
    return KVCache.init(self.config.text, batch, length, self.dtype, stacked=self.scan_layers)

  def cache_axes(self, per_slot: bool = False) -> KVCache:
    return KVCache.axes(self.config.text, per_slot, stacked=self.scan_layers)

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
