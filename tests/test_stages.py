"""The stage runner end to end on a small synthetic world: stop/resume equals an uninterrupted
run, and a stopped stage leaves nothing half-written."""

import json
import os
import shutil

import numpy as np
import pytest

from veripo_jax import main as runner
from veripo_jax.config_utils import load_config_file
from veripo_jax.data.datasets import data_source
from veripo_jax.data.loader import as_text
from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.synthetic.world import WorldConfig
from veripo_jax.rl.pair_families import Member, stored_pair
from veripo_jax.rl.pairs import write_pairs
from veripo_jax.rl.rollout import read_rollout_records
from veripo_jax.rl.stage import Preempted
from veripo_jax.train.metrics import read_metrics
from veripo_jax.train.preemption import PreemptionGuard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config():
  return load_config_file(os.path.join(REPO, "configs/tiny.py"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return build_world(tmp_path_factory.mktemp("world"), seed=0,
                     split_sizes={"train": 32, "heldout": 8},
                     world=WorldConfig(tokenizer_corpus_examples=200, tokenizer_vocab_size=600))


def small_run_config(world):
  c = tiny_config()
  c.data.source = "tfds"
  c.data.dataset_dir = world.dataset_dir
  c.data.tokenizer_dir = world.tokenizer_dir
  c.stage_order = ("sft", "grpo")
  c.mesh.fsdp, c.mesh.tensor = 1, -1   # batches of 2 rows: one batch shard
  c.stages.sft.steps = 3
  c.stages.sft.data.batch_size = 4
  c.stages.sft.micro_batch = 2
  c.stages.sft.save_every_steps = 100
  g = c.stages.grpo
  g.rounds = 2
  g.data.batch_size = 4
  g.rollout.num_samples = 2
  g.rollout.max_new_tokens = 12
  g.global_batch = 4                   # 4 prompts x 2 samples = 8 responses: 2 steps a round
  g.micro_batch = 2
  g.save_every_rounds = 1
  return c


class StopAfter(PreemptionGuard):
  """Asks for a stop at the n-th poll (polls happen at deterministic step boundaries)."""

  def __init__(self, n):
    super().__init__()
    self.polls, self.n = 0, n

  def should_stop(self):
    self.polls += 1
    return self.polls >= self.n or super().should_stop()


def _series(workdir, stage, key):
  return [(r["step"], r[key]) for r in read_metrics(workdir, stage) if key in r]


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory):
  """An uninterrupted sft -> grpo run of `small_run_config`."""
  workdir = tmp_path_factory.mktemp("straight")
  runner.run(small_run_config(world), str(workdir))
  return workdir


@pytest.mark.slow
def test_stop_and_resume_equals_uninterrupted_run(world, straight, tmp_path):
  cfg = small_run_config(world)

  resumed = tmp_path / "resumed"
  with pytest.raises(Preempted, match="sft"):
    runner.run(cfg, str(resumed), guard=StopAfter(1))       # after SFT step 1
  assert not os.path.exists(resumed / "stages/sft/done.json")
  with pytest.raises(Preempted, match="grpo"):
    runner.run(cfg, str(resumed), guard=StopAfter(2))       # mid GRPO round 0
  assert os.path.exists(resumed / "stages/sft/done.json")
  assert os.path.exists(resumed / "stages/grpo/rollouts/round_00000.jsonl")
  runner.run(cfg, str(resumed))

  for stage, key in (("sft", "sft/loss"), ("grpo", "grpo/loss"), ("grpo", "reward/mean"),
                     ("grpo", "response/length_mean")):
    want, got = _series(straight, stage, key), _series(resumed, stage, key)
    assert [s for s, _ in got] == [s for s, _ in want], (stage, key)
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=0, atol=1e-6,
                               err_msg=f"{stage} {key}")
  assert len(_series(straight, "grpo", "grpo/loss")) == 4
  for name in ("round_00000.jsonl", "round_00001.jsonl"):
    a = (straight / "stages/grpo/rollouts" / name).read_text()
    b = (resumed / "stages/grpo/rollouts" / name).read_text()
    assert a == b
  done = json.loads((resumed / "stages/grpo/done.json").read_text())
  assert done["steps"] == 4 and os.path.exists(resumed / "stages/grpo/policy/config.json")


def test_unknown_stage_field_is_an_error(world, tmp_path):
  cfg = small_run_config(world)
  with cfg.unlocked():
    cfg.stages.sft.learning_rate = 1.0                       # belongs in optimizer
  with pytest.raises(ValueError,
                     match=r"config.stages.sft: unknown field\(s\) \['learning_rate'\]"):
    runner.run(cfg, str(tmp_path / "bad"))


@pytest.mark.slow
def test_dpo_stage_on_pairs_from_stored_rollouts(world, straight, tmp_path):
  """Best-vs-worst pairs from the GRPO rollouts train a DPO stage that starts from GRPO's
  exported policy; its first step's chosen/rejected rewards start at 0 (policy = reference).
  The pairs name the dataset and split of their prompts, which the DPO stage reads even though
  its own data config names another split (whose 8 examples the pairs' indices overrun)."""
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  records = read_rollout_records(str(workdir / "stages/grpo"))
  assert {(r["dataset_dir"], r["split"]) for r in records} == {(world.dataset_dir, "train")}
  pairs = [stored_pair(Member(a, None, None, None), Member(b, None, None, None), "test")
           for a, b in zip(records[::2], records[1::2]) if a["tokens"] != b["tokens"]]
  assert len(pairs) >= 4 and max(p.source_index for p in pairs) >= 8
  assert {(p.dataset_dir, p.split) for p in pairs} == {(world.dataset_dir, "train")}
  write_pairs(str(tmp_path / "pairs.jsonl"), pairs)
  cfg = small_run_config(world)
  cfg.stage_order = ("sft", "grpo", "dpo")
  with cfg.unlocked():
    cfg.stages.dpo = dict(kind="dpo", pairs=str(tmp_path / "pairs.jsonl"), epochs=1.0,
                          micro_batch=2, data=dict(cfg.stages.grpo.data.to_dict(), batch_size=4,
                                                   split="heldout"),
                          optimizer=dict(learning_rate=1e-3))
  summaries = runner.run(cfg, str(workdir))
  assert summaries["dpo"]["steps"] == -(-len(pairs) // 4)
  steps = [r for r in read_metrics(workdir, "dpo") if "dpo/loss" in r]
  assert [r["step"] for r in steps] == list(range(1, len(steps) + 1))
  first = steps[0]
  np.testing.assert_allclose(first["dpo/loss"], np.log(2), atol=1e-5)   # -log sigmoid(0)
  np.testing.assert_allclose(first["dpo/margin"], 0.0, atol=1e-5)
  assert os.path.exists(workdir / "stages/dpo/policy/config.json")


def test_rollout_records_carry_the_whole_example(world, straight):
  """What rewards and the verifier read comes with each rollout: the example's gold answer,
  problem type, options, task and data type, as the dataset stores them."""
  train = data_source(world.dataset_dir, "train")
  records = read_rollout_records(str(straight / "stages/grpo"))
  assert records and any(r["options"] for r in records)
  for r in records:
    stored = train[r["source_index"]]
    assert r["prompt_id"] == as_text(stored["id"])
    assert r["options"] == [as_text(o) for o in stored["options"]]
    for key in ("answer", "problem_type", "task", "data_type"):
      assert r[key] == as_text(stored[key]), key
