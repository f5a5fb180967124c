"""The Grain pipeline that turns stored preference pairs into DPO batches.

Each pair's prompt example is re-read by `source_index` and encoded like a rollout prompt; the
chosen and rejected responses share that one encoding.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

from veripo_jax.data.batching import Collator
from veripo_jax.data.datasets import data_source
from veripo_jax.data.loader import (ExampleProcessor, Loader, LoaderConfig, batch_pipeline,
                                   collator)
from veripo_jax.rl.pairs import Pair


class PairProcessor(grain.transforms.Map):
  """Pair -> the encoded prompt example plus its two responses (or a skip marker)."""

  def __init__(self, source, examples: ExampleProcessor):
    self._source = source
    self._examples = examples

  def map(self, pair: Pair) -> dict:
    example = self._examples.map({**self._source[pair.source_index],
                                  "source_index": pair.source_index})
    if "skipped" not in example:
      example["chosen"] = np.asarray(pair.chosen_tokens, np.int32)
      example["rejected"] = np.asarray(pair.rejected_tokens, np.int32)
    return example


@dataclasses.dataclass(frozen=True)
class PairCollator:
  """K pair examples -> prompt batch (K rows) + responses (2K rows: chosen, then rejected)."""
  prompts: Collator

  def __call__(self, examples: list[dict]) -> dict:
    batch = self.prompts(examples)
    responses = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    k = len(batch["input_ids"])
    pad = k - len(examples)          # filler rows (drop_remainder=False) get empty responses
    responses = responses[:len(examples)] + [np.zeros(0, np.int32)] * pad + \
        responses[len(examples):] + [np.zeros(0, np.int32)] * pad
    width = max(1, max(len(r) for r in responses))
    tokens = np.full((2 * k, width), self.prompts.ids.pad, np.int32)
    for i, r in enumerate(responses):
      tokens[i, :len(r)] = r
    batch["responses"] = tokens
    batch["response_lengths"] = np.array([len(r) for r in responses], np.int64)
    return batch


def pair_loader(pairs: Sequence[Pair], dataset_dir: str, split: str, config: LoaderConfig, *,
                merge_size: int, patch_dim: int, process_index: int = 0,
                process_count: int = 1, gather_hosts: bool = False) -> Loader:
  """Shuffled (seeded), repeated DPO batches of `config.batch.batch_size` pairs per host."""
  transform = PairProcessor(data_source(dataset_dir, split), ExampleProcessor(config, merge_size))
  return Loader(batch_pipeline(grain.MapDataset.source(list(pairs)), transform,
                               PairCollator(collator(config, merge_size, patch_dim)), config,
                               process_index=process_index, process_count=process_count,
                               gather_hosts=gather_hosts))
