"""Extending the project from outside the package: a stage kind registered in a module of its
own, used by a config that the loop plans, checks and runs; a custom kind's typos are refused
by `plan` like a built-in one's."""

import dataclasses
import json
import os

import ml_collections
import pytest

from veripo_jax.config_utils import ConfigError
from veripo_jax.rl import loop
from veripo_jax.rl.stage_kinds import STAGE_KINDS, register_stage_kind
from veripo_jax.rl.stage import DataConfig, Stage


@dataclasses.dataclass(frozen=True)
class CountConfig:
  data: DataConfig = DataConfig(split="train")
  label: str = ""


class CountExamples(Stage):
  """Counts a split's examples by data type; needs no policy."""
  kind = "count_examples"
  uses_policy = False
  hands_off = False

  def __init__(self, ctx, name, cfg: CountConfig):
    super().__init__(ctx, name)
    self.cfg = cfg

  def run(self, model) -> dict:
    from veripo_jax.data.datasets import data_source
    source = data_source(self.ctx.data_dir(self.cfg.data), self.cfg.data.split)
    counts = {}
    for i in range(len(source)):
      kind = source[i]["data_type"]
      kind = kind.decode() if isinstance(kind, bytes) else str(kind)
      counts[kind] = counts.get(kind, 0) + 1
    return self.finish(None, {"label": self.cfg.label, "counts": counts}, export=False)


@pytest.fixture
def registered():
  register_stage_kind("count_examples", CountConfig, CountExamples)
  yield
  del STAGE_KINDS["count_examples"]


def _config(**stage):
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      synthetic=True, world_seed=0, split_sizes={"train": 12},
      world={"tokenizer_corpus_examples": 50}, dataset_dir="", tokenizer_dir=""))
  c.model = ml_collections.ConfigDict(dict(preset="tiny", checkpoint="", dtype="float32",
                                           param_dtype="float32", rope_mode="legacy"))
  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})
  c.stage_order = ("count",)
  c.stages = ml_collections.ConfigDict({"count": dict(kind="count_examples", **stage)})
  return c


def test_a_stage_kind_registered_from_outside_runs(registered, tmp_path):
  with pytest.raises(ValueError, match="already registered"):
    register_stage_kind("count_examples", CountConfig, CountExamples)
  summaries = loop.run(_config(label="mine"), str(tmp_path))
  counts = summaries["count"]["counts"]
  assert sum(counts.values()) == 12 and set(counts) <= {"video", "image", "text"}
  with open(os.path.join(tmp_path, "stages", "count", "done.json"), encoding="utf-8") as f:
    assert json.load(f)["label"] == "mine"


def test_a_registered_kind_is_checked_like_a_built_in(registered, tmp_path):
  with pytest.raises(ConfigError, match=r"config.stages.count: unknown field\(s\) \['lable'\] "
                                        r"\(did you mean 'label'\?\)"):
    loop.run(_config(lable="x"), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
