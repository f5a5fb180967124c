"""Extending the project from outside the package: a reward, a pair family and a stage kind,
each registered in a file of its own (`tests/extensions/`), used by a config that the loop
plans, checks and runs; a custom kind's typos are refused by `plan` like a built-in one's."""

import json
import os

import ml_collections
import pytest

from extensions import brevity_reward, count_stage, shortest_family
from veripo_jax.config_utils import ConfigError
from veripo_jax.fileio import read_jsonl
from veripo_jax.rl import loop
from veripo_jax.rl.rollout import read_rollout_records

EXTENSIONS = (brevity_reward, shortest_family, count_stage)


@pytest.fixture
def registered():
  for extension in EXTENSIONS:
    extension.register()
  yield
  for extension in EXTENSIONS:
    extension.unregister()


def _config(**stages):
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Every question counts one shape, so a few SFT steps give rollouts that are right (and so a
  # verifier with good rollouts to build pairs from).
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic", world_seed=0, split_sizes={"train": 12},
      world={"tokenizer_corpus_examples": 50, "objects_per_level": ((1, 1),),
             "video_tasks": ("count",), "image_tasks": ("image_count",)},
      dataset_dir="", tokenizer_dir=""))
  c.model = ml_collections.ConfigDict(dict(preset="tiny", checkpoint="", dtype="float32",
                                           param_dtype="float32", rope_mode="legacy"))
  c.mesh = ml_collections.ConfigDict({"data": 1, "fsdp": 1, "tensor": -1})  # one batch shard
  c.stage_order = tuple(stages)
  c.stages = ml_collections.ConfigDict(stages)
  return c


def test_a_stage_kind_registered_from_outside_runs(registered, tmp_path):
  with pytest.raises(ValueError, match="already registered"):
    count_stage.register()
  summaries = loop.run(_config(count=dict(kind="count_examples", label="mine")), str(tmp_path))
  counts = summaries["count"]["counts"]
  assert sum(counts.values()) == 12 and set(counts) <= {"video", "image", "text"}
  with open(os.path.join(tmp_path, "stages", "count", "done.json"), encoding="utf-8") as f:
    assert json.load(f)["label"] == "mine"


def test_a_registered_kind_is_checked_like_a_built_in(registered, tmp_path):
  with pytest.raises(ConfigError, match=r"config.stages.count: unknown field\(s\) \['lable'\] "
                                        r"\(did you mean 'label'\?\)"):
    loop.run(_config(count=dict(kind="count_examples", lable="x")), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_registered_reward_and_pair_family_run_in_a_loop(registered, tmp_path):
  """SFT -> GRPO scoring with the registered reward -> a verifier building pairs with the
  registered family only -> the registered stage kind."""
  data = dict(split="train", batch_size=4, template="synthetic_think",
              vision=dict(video_min_pixels=56 * 56, max_pixels=112 * 112,
                          image_min_pixels=56 * 56, image_max_pixels=112 * 112))
  cfg = _config(
      sft=dict(kind="sft", steps=40, micro_batch=4, data=data, save_every_steps=100,
               optimizer=dict(learning_rate=3e-3, warmup_ratio=0.0, schedule="constant")),
      grpo=dict(kind="grpo", rounds=1, global_batch=16, micro_batch=8, data=data,
                rollout=dict(num_samples=4, max_new_tokens=48,
                             rewards=("accuracy", "format", "brevity")),
                optimizer=dict(learning_rate=1e-4)),
      verifier=dict(kind="verifier", rollouts_from="grpo",
                    verifier=dict(families=("shortest_rejected",), max_reasoning_tokens=48)),
      count=dict(kind="count_examples"))
  loop.run(cfg, str(tmp_path))
  records = read_rollout_records(str(tmp_path / "stages/grpo"))
  for r in records:
    assert r["rewards"]["brevity"] == pytest.approx(brevity_reward.brevity(r["text"], r))
    assert r["rewards"]["total"] == pytest.approx(
        sum(r["rewards"][k] for k in ("accuracy", "format", "brevity")))
  pairs = read_jsonl(str(tmp_path / "stages/verifier/pairs.jsonl"))
  assert pairs and {p["family"] for p in pairs} == {"shortest_rejected"}
