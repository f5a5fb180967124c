"""The stage runner end to end on a small synthetic world: stop/resume equals an uninterrupted
run, and a stopped stage leaves nothing half-written."""

import json
import os

import numpy as np
import pytest

from veripo_jax import main as runner
from veripo_jax.config_utils import load_config_file
from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.synthetic.world import WorldConfig
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
  c.data.synthetic = False
  c.data.dataset_dir = world.dataset_dir
  c.data.tokenizer_dir = world.tokenizer_dir
  c.stage_order = ("sft", "grpo")
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


def test_stop_and_resume_equals_uninterrupted_run(world, tmp_path):
  cfg = small_run_config(world)
  straight = tmp_path / "straight"
  runner.run(cfg, str(straight))

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
  with pytest.raises(ValueError, match=r"config.stages.sft: unknown field\(s\) \['learning_rate'\]"):
    runner.run(cfg, str(tmp_path / "bad"))
