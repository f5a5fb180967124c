"""Builds the synthetic world's tokenizer and its TFDS datasets from a seed: question splits
(train, heldout, ...) and judge splits (names starting with "judge", see `judge.py`)."""

from __future__ import annotations

import dataclasses
import os
from typing import Iterator, Mapping

from veripo_jax.data.datasets import QABuilder
from veripo_jax.data.prompts import JUDGE_PROMPT, QWEN_VL_CHAT_TEMPLATE, TEMPLATES
from veripo_jax.data.synthetic.judge import is_judge_split, make_judge_example
from veripo_jax.data.synthetic.render import render_media
from veripo_jax.data.synthetic.teacher import teacher_reasoning
from veripo_jax.data.synthetic.tokenizer import build_tokenizer, save_tokenizer
from veripo_jax.data.synthetic.world import WorldConfig, make_example

TOKENIZER_SPLIT = "tokenizer"     # examples drawn only to train the tokenizer


class SyntheticWorldBuilder(QABuilder):
  """Seeded world examples (records + rendered media) -> ArrayRecord."""
  name = "synthetic_video_qa"

  def __init__(self, *, world: WorldConfig, seed: int, split_sizes: Mapping[str, int],
               **kwargs):
    self._world = world
    self._seed = seed
    self._split_sizes = dict(split_sizes)
    super().__init__(**kwargs)

  def _split_examples(self):
    self.skipped.update({split: 0 for split in self._split_sizes})
    return {split: self._examples(split, n) for split, n in self._split_sizes.items()}

  def _examples(self, split: str, count: int):
    for index in range(count):
      if is_judge_split(split):
        record = make_judge_example(self._world, self._seed, split, index)
        yield record["id"], record, b""
        continue
      record, things = make_example(self._world, self._seed, split, index)
      record["reasoning"] = teacher_reasoning(record, self._world, self._seed, split, index)
      yield record["id"], record, render_media(record["data_type"], things, self._world)


def tokenizer_corpus(world: WorldConfig, seed: int) -> Iterator[str]:
  """World text plus weighted copies of every prompt template, so prompts stay short."""
  for _ in range(world.tokenizer_template_weight):
    for template in TEMPLATES.values():
      yield from template.by_problem_type.values()
    yield QWEN_VL_CHAT_TEMPLATE
    yield from (JUDGE_PROMPT, "Yes", "No")       # the judge's verdicts as single tokens
  for index in range(world.tokenizer_corpus_examples):
    record, _ = make_example(world, seed, TOKENIZER_SPLIT, index)
    yield " ".join([record["problem"], *record["options"], record["reasoning"],
                    record["answer"]])


@dataclasses.dataclass(frozen=True)
class WorldPaths:
  tokenizer_dir: str
  dataset_dir: str     # pass to `datasets.data_source(dataset_dir, split)`


def build_world(out_dir: str | os.PathLike, *, seed: int, split_sizes: Mapping[str, int],
                world: WorldConfig = WorldConfig()) -> WorldPaths:
  """Tokenizer at OUT/tokenizer, datasets under OUT/tfds; identical output for the same seed."""
  out_dir = os.fspath(out_dir)
  tokenizer_dir = os.path.join(out_dir, "tokenizer")
  save_tokenizer(build_tokenizer(tokenizer_corpus(world, seed), world.tokenizer_vocab_size),
                 tokenizer_dir)
  builder = SyntheticWorldBuilder(
      world=world, seed=seed, split_sizes=split_sizes, name=f"seed{seed}",
      data_dir=os.path.join(out_dir, "tfds"), file_format="array_record")
  builder.download_and_prepare()
  return WorldPaths(tokenizer_dir, os.fspath(builder.data_dir))


