"""Representative host inputs of the right shapes, and abstract models.

Host-side preparation (rope positions, vision index tables, prompt copies) needs concrete
token ids and media grids, so the tool feeds the project's own preparation code with made-up
batches shaped as the largest a stage sees: prompts of the chosen prompt bucket, each with a
video of the stage's largest frames (as many as fit beside the prompt's text), responses of
the longest bucket. Their values are irrelevant: only shapes reach the compiler.
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from veripo_jax.buckets import bucket
from veripo_jax.data.batching import BatchSpec, Collator
from veripo_jax.data.tokenization import SpecialIds
from veripo_jax.parallel.sharding import state_shardings

_PIXELS_28 = 28 * 28
# Templates whose prompts carry no media (the judge's).
TEXT_ONLY_TEMPLATES = ("judge",)


class PresetTokenizer:
  """What `rl.loop.policy_config` reads of a tokenizer, answered from a preset: a run without
  its checkpoint or data at hand is checked with the preset's vocabulary and special ids."""

  def __init__(self, config):
    self._vocab = config.vocab_size
    self._ids = {"<|endoftext|>": config.pad_token_id, "<|im_end|>": config.eos_token_id,
                 "<|vision_start|>": config.vision_start_token_id,
                 "<|vision_end|>": config.vision_end_token_id,
                 "<|vision_pad|>": config.vision_token_id,
                 "<|image_pad|>": config.image_token_id, "<|video_pad|>": config.video_token_id}

  def __len__(self) -> int:
    return self._vocab

  def convert_tokens_to_ids(self, token: str) -> int:
    return self._ids[token]


def checkpoint_config_path(path: str) -> str:
  """`path` when it is a checkpoint directory with a config.json, else ""."""
  return path if path and os.path.exists(os.path.join(path, "config.json")) else ""


def run_model_config(cfg):
  """The run's model family, tokenizer stand-in (None with a checkpoint) and policy config:
  from the checkpoint's config.json when there is one, else the preset."""
  from veripo_jax.rl.loop import model_family, policy_config
  family = model_family(cfg)
  checkpoint = checkpoint_config_path(cfg.model.get("checkpoint", ""))
  tokenizer = PresetTokenizer(family.preset(cfg.model.preset)) if not checkpoint else None
  return family, tokenizer, policy_config(cfg, checkpoint, tokenizer)


def abstract_model(family, config, *, dtype, param_dtype, seed: int = 0,
                   rope_mode: str = "legacy", scan_layers: bool = False,
                   remat_policy: str = "nothing_saveable"):
  """The model as `family.create` builds it, with `ShapeDtypeStruct`s for parameters."""
  return nnx.eval_shape(lambda: family.create(
      config, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed), rope_mode=rope_mode,
      scan_layers=scan_layers, remat_policy=remat_policy))


def place_model(model, mesh, rules):
  """An abstract model whose parameters carry their shardings (`parallel.shard_model`'s)."""
  graphdef, state = nnx.split(model)
  shardings = state_shardings(state, mesh, rules)
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       state, shardings)
  return nnx.merge(graphdef, state)


@dataclasses.dataclass(frozen=True)
class Shapes:
  """The sizes the representative batches take."""
  prompt_length: int          # the prompt bucket
  response_length: int        # the response bucket
  video_grid: tuple[int, int, int] | None   # (t, h, w) patches of each prompt's video


def choose_prompt_length(data, prompt_length: int | None) -> int:
  """The stage's largest prompt bucket, or the bucket holding `prompt_length` (capped there)."""
  buckets = tuple(data.prompt_buckets)
  if not prompt_length:
    return buckets[-1]
  return min(bucket(prompt_length, buckets), buckets[-1])


def video_grid(vision_config, settings, prompt_length: int, max_frames: int | None = None
               ) -> tuple[int, int, int] | None:
  """(t, h, w) of the largest video a prompt of `prompt_length` tokens holds: frames at the
  per-frame pixel cap, up to the settings' `max_frames` (and `max_frames`), leaving an eighth
  of the prompt (at least 32 tokens) for text."""
  if vision_config is None:
    return None
  merge = vision_config.spatial_merge_size
  factor = vision_config.patch_size * merge
  per_frame = settings.max_pixels or settings.video_max_pixels
  tokens = max(1, per_frame // (factor * factor))          # merged tokens per frame pair
  mh = max(1, math.isqrt(tokens))
  mw = max(1, tokens // mh)
  frames = min(settings.max_frames, max_frames or settings.max_frames)
  t = max(1, frames // vision_config.temporal_patch_size)
  room = prompt_length - max(32, prompt_length // 8)
  t = max(1, min(t, room // (mh * mw)))
  if t * mh * mw > room:
    return None
  return (t, mh * merge, mw * merge)


def model_ids(config) -> SpecialIds:
  return SpecialIds(pad=config.pad_token_id, eos=config.eos_token_id,
                    vision_start=config.vision_start_token_id,
                    vision_end=config.vision_end_token_id, image=config.image_token_id,
                    video=config.video_token_id)


def text_token(config) -> int:
  """An ordinary token id (no special or media id) for the made-up text."""
  special = {config.pad_token_id, config.eos_token_id, config.bos_token_id,
             *config.media_token_ids}
  return next(i for i in range(3, config.vocab_size) if i not in special)


def prompt_batch(config, data, rows: int, shapes: Shapes, *, rope_mode: str = "legacy",
                 with_response: bool = False) -> dict:
  """A loader batch (`data.batching.Collator`) of `rows` prompts of `shapes.prompt_length`
  tokens, each with a video of `shapes.video_grid` (none for text-only data), and with
  `with_response` gold responses of `shapes.response_length` tokens."""
  v = config.vision
  grid = None if data.template in TEXT_ONLY_TEMPLATES else shapes.video_grid
  ids, word = model_ids(config), text_token(config)
  examples = []
  for i in range(rows):
    media = [] if grid is None else (
        [ids.vision_start] + [ids.video] * (math.prod(grid) // v.spatial_merge_size ** 2)
        + [ids.vision_end])
    text = shapes.prompt_length - len(media)
    example = {"prompt_ids": [word] * (text // 2) + media + [word] * (text - text // 2),
               "data_type": "text" if grid is None else "video",
               "id": f"compile_check_{i}", "answer": "A", "problem_type": "multiple choice",
               "task": "", "options": [], "source_index": i}
    if grid is not None:
      example.update(pixel_values=np.zeros((math.prod(grid), v.patch_dim), np.float32),
                     grid_thw=grid, second_per_grid_t=1.0)
    if with_response:
      example["response_ids"] = [word] * shapes.response_length
    examples.append(example)
  spec = BatchSpec(batch_size=rows, prompt_buckets=(shapes.prompt_length,),
                   response_buckets=(max(1, shapes.response_length),),
                   patch_buckets=tuple(data.patch_buckets), with_response=with_response)
  collate = Collator(spec, ids, v.patch_dim if v else 1, v.spatial_merge_size if v else 2,
                     v.tokens_per_second if v else 2.0, rope_mode)
  return collate(examples)


def response_tokens(config, rows: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """`rows` responses of `length` ordinary tokens, and their lengths."""
  return (np.full((rows, length), text_token(config), np.int32),
          np.full((rows,), length, np.int64))


def per_chip_bytes(tree) -> int:
  """Bytes one chip holds of a tree of `ShapeDtypeStruct`s with shardings (the largest shard)."""
  total = 0
  for x in jax.tree.leaves(tree):
    shape = x.shape
    sharding = getattr(x, "sharding", None)
    if sharding is not None:
      shape = sharding.shard_shape(shape)
    total += math.prod(shape) * _itemsize(x.dtype)
  return total


def _itemsize(dtype) -> int:
  if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
    return 8                                   # a threefry key: two uint32
  return jnp.dtype(dtype).itemsize
