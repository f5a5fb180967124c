"""The whole VerIPO loop, reduced: sft -> judge (sft, fresh) -> grpo -> verifier (the judge served
by JetStream) -> dpo -> grpo (easy prompts discarded) -> eval, and the report. Killed during
DPO and restarted, it ends with the pairs and metrics of an uninterrupted run.

The policy memorises a 6-example world in its SFT stage, so its rollouts are mostly right and
well formed: the verifier finds good rollouts and builds pairs, and some prompts are easy.
"""

import json
import os
import shutil

import numpy as np
import pytest
import safetensors.numpy

from veripo_jax import main as runner
from veripo_jax.config_utils import load_config_file
from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.synthetic.world import WorldConfig
from veripo_jax.rl.recorded_config import ConfigChanged
from veripo_jax.rl.stage import Preempted
from veripo_jax.train.metrics import read_metrics
from veripo_jax.train.preemption import PreemptionGuard


pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAGES = ("sft", "judge", "grpo", "verifier", "dpo", "grpo_2", "eval", "judge_b", "judge_eval")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return build_world(tmp_path_factory.mktemp("world"), seed=0,
                     split_sizes={"train": 6, "heldout": 4, "judge_train": 64,
                                  "judge_train_b": 64, "judge_heldout": 8},
                     world=WorldConfig(tokenizer_corpus_examples=200))


def loop_config(world):
  c = load_config_file(os.path.join(REPO, "configs/tiny.py"))
  c.data.source = "tfds"
  c.data.dataset_dir = world.dataset_dir
  c.data.tokenizer_dir = world.tokenizer_dir
  c.stage_order = STAGES
  c.model.text, c.model.vision = {}, {}       # the preset's size: this test is about plumbing
  c.mesh.fsdp, c.mesh.tensor = 1, -1          # small batches (6 rows): one batch shard
  s = c.stages
  s.sft.steps, s.sft.data.batch_size, s.sft.micro_batch = 120, 6, 6
  s.sft.optimizer.learning_rate, s.sft.optimizer.schedule = 5e-3, "constant"
  s.sft.save_every_steps = 1000
  for judge in (s.judge, s.judge_b):
    judge.steps, judge.data.batch_size, judge.micro_batch = 2, 8, 8
  s.judge_eval.evals = ("eval",)
  s.judge_eval.judge.max_concurrent_decodes = 8
  s.judge_eval.judge_max_tokens = 4
  for name, rounds in (("grpo", 2), ("grpo_2", 1)):
    g = s[name]
    g.rounds, g.data.batch_size, g.rollout.num_samples = rounds, 6, 4
    g.rollout.max_new_tokens = 96
    g.global_batch = g.micro_batch = 12       # 6 prompts x 4: 2 steps a round
  s.verifier.judge.max_concurrent_decodes = 8
  # The judge is served and measured, but two steps of training do not earn trust: the rules
  # build the pairs (the barely trained judge would say No to every rollout of the memorised
  # policy, leaving no good rollout). judge_eval grades with a served judge either way.
  s.verifier.min_heldout_agreement = 1.01
  s.verifier.verifier.judge_max_tokens = 4
  s.verifier.verifier.max_reasoning_tokens = 96
  # One prompt row (up to two pairs) a step, two epochs: more than one step even when the
  # verifier finds pairs on one prompt only, so a stop can land inside the stage.
  s.dpo.data.batch_size, s.dpo.micro_batch, s.dpo.save_every_steps = 1, 2, 100
  s.dpo.epochs = 2.0
  s.eval.data.batch_size, s.eval.rollout.num_samples = 4, 2
  return c


class StopInStage(PreemptionGuard):
  """Asks for a stop once `stage` has written its first metrics record."""

  def __init__(self, workdir, stage):
    super().__init__()
    self.workdir, self.stage = workdir, stage

  def should_stop(self):
    return bool(read_metrics(self.workdir, self.stage)) or super().should_stop()


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("loop")
  return workdir, runner.run(loop_config(world), str(workdir))


def _stage_file(workdir, stage, name):
  with open(os.path.join(workdir, "stages", stage, name), encoding="utf-8") as f:
    return f.read()


def test_loop_runs_every_stage_and_reports(straight):
  workdir, summaries = straight
  assert list(summaries) == list(STAGES)
  verifier = summaries["verifier"]["metrics"]
  assert verifier["judge/served"] == 1 and verifier["judge/trusted"] == 0
  assert verifier["judge/heldout_count"] == 8 and verifier["verifier/fallbacks"] > 0
  assert verifier["verifier/rollouts"] == 2 * 6 * 4
  pairs = [json.loads(line) for line in _stage_file(workdir, "verifier", "pairs.jsonl")
           .splitlines()]
  assert len(pairs) == verifier["verifier/pairs_total"] > 0
  assert summaries["dpo"]["pairs"] == len(pairs) and summaries["dpo"]["steps"] >= 2  # the kill test stops after step 1
  # The second GRPO stage trains on the data minus the discarded easy prompts.
  discard = json.loads(_stage_file(workdir, "verifier", "discard.json"))
  assert discard["discarded"], "the memorised world should have easy prompts"
  assert len(discard["discarded"]) == round(0.8 * len(discard["easy"]))
  seen = {json.loads(line)["source_index"] for line in
          _stage_file(workdir, "grpo_2", "rollouts/round_00000.jsonl").splitlines()}
  assert seen and not seen & set(discard["discarded"])
  # The DPO stage starts from the GRPO policy (the judge's policy is not handed on).
  first = next(r for r in read_metrics(str(workdir), "dpo") if "dpo/loss" in r)
  assert abs(first["dpo/margin"]) < 1e-3        # the policy is its reference at the start
  # The independent judge is another checkpoint with other weights, and it graded the eval.
  judges = [os.path.join(workdir, "stages", name, "policy") for name in ("judge", "judge_b")]
  assert judges[0] != judges[1]
  weights = [safetensors.numpy.load_file(os.path.join(d, "model.safetensors")) for d in judges]
  assert weights[0].keys() == weights[1].keys()
  assert any(not np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
  responses = _stage_file(workdir, "eval", "responses.jsonl").splitlines()
  verdicts = [json.loads(line) for line in
              _stage_file(workdir, "eval", "judge_verdicts.jsonl").splitlines()]
  assert 0 < len(verdicts) <= len(responses)
  assert all(0 <= v["index"] < len(responses) for v in verdicts)
  graded = json.loads(_stage_text(workdir, "report.json"))["evaluations"][-1]
  assert graded["stage"] == "eval" and graded["examples"] == len(responses)
  report = _stage_text(workdir, "report.md")
  assert "DPO is" in report and "after grpo_2" in report
  for family in ("consistency", "penalty", "accuracy", "reflection"):
    assert family in report


def _stage_text(workdir, name):
  with open(os.path.join(workdir, name), encoding="utf-8") as f:
    return f.read()


def test_killed_during_dpo_resumes_to_the_same_pairs_and_metrics(world, straight, tmp_path):
  cfg = loop_config(world)
  with pytest.raises(Preempted, match="dpo"):
    runner.run(cfg, str(tmp_path), guard=StopInStage(str(tmp_path), "dpo"))
  assert not os.path.exists(tmp_path / "stages/dpo/done.json")
  summaries = runner.run(cfg, str(tmp_path))
  workdir, want = straight
  for name in ("pairs.jsonl", "checks.jsonl", "discard.json"):
    assert _stage_file(tmp_path, "verifier", name) == _stage_file(workdir, "verifier", name)
  assert untimed(summaries["verifier"]["metrics"]) == untimed(want["verifier"]["metrics"])
  for stage, key in (("dpo", "dpo/loss"), ("grpo_2", "reward/mean")):
    got = [(r["step"], r[key]) for r in read_metrics(str(tmp_path), stage) if key in r]
    ref = [(r["step"], r[key]) for r in read_metrics(str(workdir), stage) if key in r]
    assert [s for s, _ in got] == [s for s, _ in ref]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in ref], rtol=1e-5, atol=1e-6)
  assert _stage_file(tmp_path, "grpo_2", "rollouts/round_00000.jsonl") == _stage_file(
      workdir, "grpo_2", "rollouts/round_00000.jsonl")
  assert untimed(summaries["eval"]["metrics"]) == pytest.approx(
      untimed(want["eval"]["metrics"]), rel=1e-5)


def untimed(metrics):
  return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def test_moved_workdir_resumes_and_changed_config_is_refused_then_rerun(world, straight,
                                                                         tmp_path, monkeypatch):
  """A copy of the finished workdir, run from another cwd: the same config finds every stage
  done; a changed stage field stops the run before anything runs, naming the field; with
  `rerun_changed` that stage runs again (the stages before it stay done) and its old outputs
  are kept; a changed `config.data` is refused outright."""
  workdir, _ = straight
  moved = tmp_path / "moved"
  shutil.copytree(workdir, moved)
  monkeypatch.chdir(tmp_path)
  cfg = loop_config(world)
  done = {name: _stage_text(moved, f"stages/{name}/done.json") for name in STAGES}
  runner.run(cfg, "moved")
  assert {name: _stage_text(moved, f"stages/{name}/done.json") for name in STAGES} == done

  cfg.stages.judge_eval.judge_max_tokens = 5
  with pytest.raises(ConfigChanged, match=r"stages.judge_eval.stage.judge_max_tokens: 4 -> 5"):
    runner.run(cfg, "moved")
  assert _stage_text(moved, "stages/judge_eval/done.json") == done["judge_eval"]
  runner.run(cfg, "moved", rerun_changed=True)
  assert os.path.exists(moved / "stages/judge_eval.replaced-1/done.json")
  assert json.loads(_stage_text(moved, "stages/judge_eval/config.json"))["stage"][
      "judge_max_tokens"] == 5
  assert {name: _stage_text(moved, f"stages/{name}/done.json")
          for name in STAGES[:-1]} == {k: v for k, v in done.items() if k != "judge_eval"}

  cfg.data.dataset_dir = str(tmp_path / "another_world")
  with pytest.raises(ConfigChanged, match=r"config.data.dataset_dir: .*use a new --workdir"):
    runner.run(cfg, "moved")
