"""The Grain pipeline that turns stored preference pairs into DPO batches.

Each pair's prompt example is re-read from the split the pair names (`dataset_dir`, `split`,
`source_index`) and encoded like a rollout prompt; the chosen and rejected responses share that
one encoding. Every batch carries `pair_index` (the
pair's position in the stage's pair list, -1 on filler rows), which keys per-pair values the
stage keeps across epochs (the reference log-probs).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import grain
import numpy as np

from veripo_jax.data.batching import Collator, bucket
from veripo_jax.data.datasets import data_source
from veripo_jax.data.loader import (ExampleProcessor, Loader, LoaderConfig, batch_pipeline,
                                   collator)
from veripo_jax.rl.pairs import Pair


class IndexedPairs(Sequence):
  """The pairs as (index, pair): the index survives Grain's shuffle, shard and repeat."""

  def __init__(self, pairs: Sequence[Pair]):
    self.pairs = list(pairs)

  def __len__(self) -> int:
    return len(self.pairs)

  def __getitem__(self, i: int) -> tuple[int, Pair]:
    return int(i), self.pairs[i]


class PairProcessor(grain.transforms.Map):
  """(index, pair) -> the encoded prompt example plus its two responses (or a skip marker)."""

  def __init__(self, sources: Mapping[tuple[str, str], Any], keys: Sequence[tuple[str, str]],
               examples: ExampleProcessor):
    self._sources = sources          # (dataset_dir, split) -> data source
    self._keys = keys                # per pair index: its (dataset_dir, split)
    self._examples = examples

  def map(self, element: tuple[int, Pair]) -> dict:
    index, pair = element
    source = self._sources[self._keys[index]]
    example = self._examples.map({**source[pair.source_index],
                                  "source_index": pair.source_index})
    if "skipped" not in example:
      example["pair_index"] = index
      example["chosen"] = np.asarray(pair.chosen_tokens, np.int32)
      example["rejected"] = np.asarray(pair.rejected_tokens, np.int32)
    return example


@dataclasses.dataclass(frozen=True)
class PairCollator:
  """K pair examples -> prompt batch (K rows) + responses (2K rows: chosen, then rejected).

  Responses are padded to the smallest response bucket that holds the batch's longest one, as
  prompts and patches are, so batch shapes take a few values rather than one per batch.
  """
  prompts: Collator

  def __call__(self, examples: list[dict]) -> dict:
    batch = self.prompts(examples)
    responses = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    k = len(batch["input_ids"])
    pad = k - len(examples)          # filler rows (drop_remainder=False) get empty responses
    responses = responses[:len(examples)] + [np.zeros(0, np.int32)] * pad + \
        responses[len(examples):] + [np.zeros(0, np.int32)] * pad
    width = bucket(max(1, max(len(r) for r in responses)), self.prompts.spec.response_buckets)
    tokens = np.full((2 * k, width), self.prompts.ids.pad, np.int32)
    for i, r in enumerate(responses):
      tokens[i, :len(r)] = r
    batch["responses"] = tokens
    batch["response_lengths"] = np.array([len(r) for r in responses], np.int64)
    batch["pair_index"] = np.array([e["pair_index"] for e in examples] + [-1] * pad, np.int64)
    return batch


def pair_loader(pairs: Sequence[Pair], dataset_dir: str, split: str, config: LoaderConfig, *,
                merge_size: int, patch_dim: int, process_index: int = 0,
                process_count: int = 1, gather_hosts: bool = False,
                resolve_dataset_dir: Callable[[str], str] = lambda recorded: recorded) -> Loader:
  """Shuffled (seeded), repeated DPO batches of `config.batch.batch_size` pairs per host.

  Each pair's prompt is read from the dataset and split it names; `dataset_dir` and `split`
  serve pairs that name none. `resolve_dataset_dir` turns a recorded directory into a path.
  """
  keys = [(resolve_dataset_dir(p.dataset_dir) if p.dataset_dir else dataset_dir,
           p.split or split) for p in pairs]
  sources = {key: data_source(*key) for key in set(keys)}
  transform = PairProcessor(sources, keys, ExampleProcessor(config, merge_size))
  return Loader(batch_pipeline(grain.MapDataset.source(IndexedPairs(pairs)), transform,
                               PairCollator(collator(config, merge_size, patch_dim)), config,
                               process_index=process_index, process_count=process_count,
                               gather_hosts=gather_hosts))
