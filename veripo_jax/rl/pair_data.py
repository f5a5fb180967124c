"""The Grain pipeline that turns stored preference pairs into DPO batches.

Each pair's prompt example is re-read from the split the pair names (`dataset_dir`, `split`,
`source_index`) and encoded like a rollout prompt; the chosen and rejected responses share that
one encoding, and so do the other pairs on the same prompt when a row holds several
(`per_row`: the verifier makes up to `max_pairs_per_prompt` pairs a prompt). Every batch
carries `pair_index` (each pair's position in the stage's pair list, -1 on empty slots), which
keys per-pair values the stage keeps across epochs (the reference log-probs).
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


def pair_groups(pairs: Sequence[Pair], per_row: int) -> list[tuple[int, ...]]:
  """Pair indices grouped by prompt (recorded dataset, split and source index), at most
  `per_row` a group, ordered by their first pair: the pairs that can share a row (with
  `per_row` 1, each pair alone, in order)."""
  by_prompt: dict[tuple, list[int]] = {}
  for i, p in enumerate(pairs):
    by_prompt.setdefault((p.dataset_dir, p.split, p.source_index), []).append(i)
  return sorted((tuple(group[j:j + per_row]) for group in by_prompt.values()
                 for j in range(0, len(group), per_row)), key=lambda g: g[0])


class PairGroups(Sequence):
  """The loader's items: groups of pair indices (`pair_groups`); the indices survive Grain's
  shuffle, shard and repeat."""

  def __init__(self, pairs: Sequence[Pair], per_row: int):
    self.pairs = list(pairs)
    self.groups = pair_groups(self.pairs, per_row)

  def __len__(self) -> int:
    return len(self.groups)

  def __getitem__(self, i: int) -> list[tuple[int, Pair]]:
    return [(j, self.pairs[j]) for j in self.groups[i]]


class PairProcessor(grain.transforms.Map):
  """A group of (index, pair) on one prompt -> the encoded prompt example plus the group's
  responses (or a skip marker)."""

  def __init__(self, sources: Mapping[tuple[str, str], Any], keys: Sequence[tuple[str, str]],
               examples: ExampleProcessor):
    self._sources = sources          # (dataset_dir, split) -> data source
    self._keys = keys                # per pair index: its (dataset_dir, split)
    self._examples = examples

  def map(self, group: list[tuple[int, Pair]]) -> dict:
    index, pair = group[0]
    source = self._sources[self._keys[index]]
    example = self._examples.map({**source[pair.source_index],
                                  "source_index": pair.source_index})
    if "skipped" not in example:
      example["pair_index"] = [i for i, _ in group]
      example["chosen"] = [np.asarray(p.chosen_tokens, np.int32) for _, p in group]
      example["rejected"] = [np.asarray(p.rejected_tokens, np.int32) for _, p in group]
      example["nll_from"] = [p.chosen_nll_from for _, p in group]
    return example


@dataclasses.dataclass(frozen=True)
class PairCollator:
  """K pair groups -> prompt batch (K rows) + responses (2 P K rows for P = `per_row` pair
  slots a row: chosen of slot 0 for the K rows, ... of slot P-1, then rejected likewise) and
  `pair_index` and `nll_from` (P K, slot-major; pair index -1 where a slot or a filler row
  holds no pair).

  Responses are padded to the smallest response bucket that holds the batch's longest one, as
  prompts and patches are, so batch shapes take a few values rather than one per batch.
  """
  prompts: Collator
  per_row: int = 1

  def __call__(self, examples: list[dict]) -> dict:
    batch = self.prompts(examples)
    k = len(batch["input_ids"])      # filler rows (drop_remainder=False) past the examples
    empty = np.zeros(0, np.int32)
    slot = lambda field, j, r, none: (examples[r][field][j] if r < len(examples)
                                      and j < len(examples[r][field]) else none)
    responses = [slot(field, j, r, empty) for field in ("chosen", "rejected")
                 for j in range(self.per_row) for r in range(k)]
    width = bucket(max(1, max(len(r) for r in responses)), self.prompts.spec.response_buckets)
    tokens = np.full((len(responses), width), self.prompts.ids.pad, np.int32)
    for i, r in enumerate(responses):
      tokens[i, :len(r)] = r
    batch["responses"] = tokens
    batch["response_lengths"] = np.array([len(r) for r in responses], np.int64)
    for field, none in (("pair_index", -1), ("nll_from", 0)):
      batch[field] = np.array([slot(field, j, r, none) for j in range(self.per_row)
                               for r in range(k)], np.int64)
    return batch


def pair_loader(pairs: Sequence[Pair], dataset_dir: str, split: str, config: LoaderConfig, *,
                merge_size: int, patch_dim: int, process_index: int = 0,
                process_count: int = 1, gather_hosts: bool = False, per_row: int = 1,
                resolve_dataset_dir: Callable[[str], str] = lambda recorded: recorded) -> Loader:
  """Shuffled (seeded), repeated DPO batches of `config.batch.batch_size` pair groups (prompt
  rows) per host, each group up to `per_row` pairs on one prompt (`pair_groups`).

  Each pair's prompt is read from the dataset and split it names; `dataset_dir` and `split`
  serve pairs that name none. `resolve_dataset_dir` turns a recorded directory into a path.
  """
  keys = [(resolve_dataset_dir(p.dataset_dir) if p.dataset_dir else dataset_dir,
           p.split or split) for p in pairs]
  sources = {key: data_source(*key) for key in set(keys)}
  transform = PairProcessor(sources, keys, ExampleProcessor(config, merge_size))
  return Loader(batch_pipeline(grain.MapDataset.source(PairGroups(pairs, per_row)), transform,
                               PairCollator(collator(config, merge_size, patch_dim), per_row),
                               config,
                               process_index=process_index, process_count=process_count,
                               gather_hosts=gather_hosts))
