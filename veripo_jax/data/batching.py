"""Examples -> one padded batch: prompt/response padding to length buckets, patch rows to
patch-count buckets, and the 3-D M-RoPE positions of the padded batch.

Bucketing keeps the set of array shapes small, so jitted steps compile a few times rather than
once per batch. Prompts are left-padded (every prompt ends in the same column, where generation
starts); gold responses, when asked for, follow the prompt and are right-padded.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from veripo_jax.buckets import bucket
from veripo_jax.data.schema import TEXT_FIELDS
from veripo_jax.data.tokenization import SpecialIds
from veripo_jax.models.qwen2_5_vl.rope_index import get_rope_index



@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """Batch shape policy. Buckets are sorted sizes; a batch pads up to the smallest that fits."""
  batch_size: int = 8
  prompt_buckets: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192, 16384)
  response_buckets: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
  # Patch rows per batch (all videos or all images); past the last bucket, multiples of it.
  patch_buckets: tuple[int, ...] = (1024, 2048, 4096, 8192, 16384, 32768, 65536)
  with_response: bool = False     # append the gold response (SFT warm start, DPO)
  drop_remainder: bool = True     # else the last batch is filled with masked-out rows

  def __post_init__(self):
    for name in ("prompt_buckets", "response_buckets", "patch_buckets"):
      buckets = getattr(self, name)
      if not buckets or list(buckets) != sorted(set(buckets)) or buckets[0] <= 0:
        raise ValueError(f"BatchSpec.{name} must be increasing positive sizes, got {buckets}")
    if self.batch_size <= 0:
      raise ValueError(f"BatchSpec.batch_size must be positive, got {self.batch_size}")


def _patches(examples: list[dict], kind: str, buckets: Sequence[int], row_dim: int):
  items = [e for e in examples if e["data_type"] == kind]
  rows = [e["pixel_values"] for e in items]
  n = sum(len(r) for r in rows)
  out = np.zeros((bucket(n, buckets), row_dim), np.float32)
  if rows:
    out[:n] = np.concatenate(rows)
  grid = np.array([e["grid_thw"] for e in items], np.int32).reshape(-1, 3)
  spg = np.array([e["second_per_grid_t"] for e in items], np.float32)
  return out, grid, spg


@dataclasses.dataclass(frozen=True)
class Collator:
  """Builds one batch; holds the token ids and rope settings of the target model."""
  spec: BatchSpec
  ids: SpecialIds
  patch_dim: int
  merge_size: int
  tokens_per_second: float
  rope_mode: str = "legacy"

  def __call__(self, examples: list[dict]) -> dict:
    spec, real = self.spec, len(examples)
    rows = spec.batch_size if not spec.drop_remainder else real
    prompts = [e["prompt_ids"] for e in examples]
    width = bucket(max(len(p) for p in prompts), spec.prompt_buckets)
    tokens = np.full((rows, width), self.ids.pad, np.int32)
    mask = np.zeros((rows, width), np.int32)
    for i, p in enumerate(prompts):
      tokens[i, width - len(p):] = p
      mask[i, width - len(p):] = 1
    batch = {}
    if spec.with_response:
      responses = [e["response_ids"] for e in examples]
      rwidth = bucket(max(len(r) for r in responses), spec.response_buckets)
      rtokens = np.full((rows, rwidth), self.ids.pad, np.int32)
      rmask = np.zeros((rows, rwidth), np.int32)
      for i, r in enumerate(responses):
        rtokens[i, :len(r)] = r
        rmask[i, :len(r)] = 1
      tokens = np.concatenate([tokens, rtokens], axis=1)
      mask = np.concatenate([mask, rmask], axis=1)
      batch["response_mask"] = np.concatenate([np.zeros((rows, width), np.int32), rmask], 1)
    videos, video_grid, spg = _patches(examples, "video", spec.patch_buckets, self.patch_dim)
    images, image_grid, _ = _patches(examples, "image", spec.patch_buckets, self.patch_dim)
    positions, next_position = get_rope_index(
        tokens, mask, image_grid, video_grid, spg, image_token_id=self.ids.image,
        video_token_id=self.ids.video, spatial_merge_size=self.merge_size,
        tokens_per_second=self.tokens_per_second, mode=self.rope_mode)
    batch.update(
        input_ids=tokens, attention_mask=mask, position_ids=positions,
        next_position=next_position.astype(np.int32),
        example_mask=(np.arange(rows) < real).astype(np.int32),
        pixel_values_videos=videos, video_grid_thw=video_grid, second_per_grid_ts=spg,
        pixel_values=images, image_grid_thw=image_grid)
    for field in TEXT_FIELDS:
      batch[field] = np.array([e[field] for e in examples] + [""] * (rows - real), object)
    batch["options"] = np.empty(rows, object)     # one list per row, not a 2-D array
    for i in range(rows):
      batch["options"][i] = list(examples[i].get("options", ())) if i < real else []
    batch["source_index"] = np.array(
        [e.get("source_index", -1) for e in examples] + [-1] * (rows - real), np.int64)
    return batch
