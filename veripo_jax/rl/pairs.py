"""Preference pairs on disk and the Grain pipeline that turns them into DPO batches.

A pair names its prompt by `source_index` (the example's position in its dataset split), so the
DPO stage re-reads and re-encodes that example's video with the same preprocessing as the
rollout; chosen and rejected responses are stored as token ids (and text, for people).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from veripo_jax.data.batching import Collator
from veripo_jax.data.datasets import data_source
from veripo_jax.data.loader import (BatchDataset, ExampleProcessor, GatherHosts, Loader,
                                   LoaderConfig)
from veripo_jax.data.tokenization import SpecialIds, load_tokenizer
from veripo_jax.fileio import write_text_atomic


@dataclasses.dataclass(frozen=True)
class Pair:
  prompt_id: str
  source_index: int
  family: str
  chosen_tokens: tuple[int, ...]
  rejected_tokens: tuple[int, ...]
  chosen_text: str = ""
  rejected_text: str = ""

  def to_json(self) -> dict:
    return {"prompt_id": self.prompt_id, "source_index": self.source_index,
            "family": self.family,
            "chosen": {"tokens": list(self.chosen_tokens), "text": self.chosen_text},
            "rejected": {"tokens": list(self.rejected_tokens), "text": self.rejected_text}}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Pair":
    return cls(prompt_id=d["prompt_id"], source_index=int(d["source_index"]),
               family=d["family"], chosen_tokens=tuple(d["chosen"]["tokens"]),
               rejected_tokens=tuple(d["rejected"]["tokens"]),
               chosen_text=d["chosen"].get("text", ""),
               rejected_text=d["rejected"].get("text", ""))


def write_pairs(path: str, pairs: Sequence[Pair]) -> None:
  write_text_atomic(path, "".join(json.dumps(p.to_json()) + "\n" for p in pairs))


def read_pairs(path: str) -> list[Pair]:
  pairs = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        pairs.append(Pair.from_json(json.loads(line)))
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{n}: bad preference pair ({e!r})") from e
  return pairs


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
  ds = grain.MapDataset.source(list(pairs))
  if config.shuffle:
    ds = ds.seed(config.seed).shuffle()
  ds = ds.repeat(config.num_epochs)[process_index::process_count]
  ds = ds.map(PairProcessor(data_source(dataset_dir, split), ExampleProcessor(config, merge_size)))
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=config.read_threads,
                                            prefetch_buffer_size=config.prefetch))
  ids = SpecialIds.from_tokenizer(load_tokenizer(config.tokenizer_dir))
  collate = PairCollator(Collator(config.batch, ids, patch_dim, merge_size,
                                  config.tokens_per_second, config.rope_mode))
  return Loader(BatchDataset(it, GatherHosts(collate) if gather_hosts else collate,
                            config.batch))
