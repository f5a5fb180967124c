"""Run report: report.json's numbers are the run's own (standard errors clustered by prompt), the
claims flip at their thresholds, plots are valid PNGs with labelled axes, a partial run still
gets a report, and the CLI refuses a directory that is not a run."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
import types

import numpy as np
import pytest

from veripo_jax.rl import report
from veripo_jax.rl.claims import evaluate_claims, milestones
from veripo_jax.rl.report import PLOT_DIR, SUMMARY_FILE, write_report
from veripo_jax.rl.run_summary import stage_order_from_metrics
from veripo_jax.rl.stage import Stage
from veripo_jax.rl.stats import cluster_mean

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ORDER = ("sft", "eval_sft", "judge", "grpo", "eval_grpo", "verifier", "dpo", "eval_dpo",
         "grpo_2", "eval", "judge_eval")
FAMILIES = {"consistency": 7, "penalty": 3, "accuracy": 11, "reflection": 2}
SFT_TIMES = [5.0, 0.2, 0.3, 0.4]
GRPO_PROMPT_TIMES = {"grpo": [10.0, 2.0, 4.0], "grpo_2": [5.0, 3.0]}  # grpo_2: 2 rounds, all count
G = 4
DPO_TIMES = [3.0, 0.5, 0.7]                     # seconds per pair
TEXTS = {"yes": "<think>So the answer is B.</think><answer>B</answer>",       # rule: consistent
         "no": "<think>So the answer is C.</think><answer>B</answer>",        # rule: inconsistent
         "silent": "<think>Hmm, hard to tell.</think><answer>B</answer>",     # no conclusion
         "bare": "<answer>B</answer>"}                                        # no think
# Per evaluation, per prompt: its samples as (text kind, accuracy, length in tokens).
EVALS = {
    "eval_sft": [[("yes", 1, 20), ("yes", 0, 22), ("silent", 0, 9), ("bare", 0, 4)],
                 [("yes", 1, 30), ("no", 0, 31), ("yes", 1, 29), ("yes", 0, 30)],
                 [("silent", 0, 12), ("yes", 0, 25), ("yes", 1, 26), ("no", 0, 27)],
                 [("yes", 1, 18), ("yes", 1, 19), ("yes", 0, 20), ("yes", 1, 21)]],
    "eval_grpo": [[("yes", 1, 20), ("no", 1, 22), ("no", 1, 20), ("yes", 0, 21)],
                  [("yes", 1, 30), ("no", 0, 31), ("no", 1, 29), ("no", 1, 30)],
                  [("no", 1, 12), ("yes", 1, 25), ("no", 1, 26), ("no", 0, 27)],
                  [("no", 1, 18), ("yes", 1, 19), ("no", 0, 20), ("yes", 1, 21)]],
    "eval_dpo": [[("yes", 1, 40), ("yes", 1, 42), ("yes", 1, 40), ("yes", 0, 41)],
                 [("yes", 1, 50), ("yes", 0, 51), ("yes", 1, 49), ("no", 1, 50)],
                 [("yes", 1, 32), ("yes", 1, 45), ("yes", 1, 46), ("yes", 0, 47)],
                 [("yes", 1, 38), ("yes", 1, 39), ("yes", 0, 40), ("yes", 1, 41)]],
    "eval": [[("yes", 1, 40), ("yes", 1, 42), ("yes", 1, 40), ("yes", 1, 41)],
             [("yes", 1, 50), ("yes", 0, 51), ("yes", 1, 49), ("no", 1, 50)],
             [("yes", 1, 32), ("yes", 1, 45), ("yes", 1, 46), ("yes", 0, 47)],
             [("yes", 1, 38), ("yes", 1, 39), ("yes", 0, 40), ("yes", 1, 41)]],
}
# eval_dpo's judge verdicts by response index (responses with a think and an answer only).
VERDICTS = {i: "consistent" for i in range(16)} | {3: "inconsistent", 7: "unknown",
                                                    9: "inconsistent"}
WALL = {"sft": 60.0, "eval_sft": 7.0, "judge": 30.0, "grpo": 90.0, "eval_grpo": 8.0,
        "verifier": 12.0, "dpo": 20.0, "eval_dpo": 9.0, "grpo_2": 50.0,
        "judge_eval": 5.0}                       # "eval" has no wall_s (an older run's done.json)


class FakeRun:
  """Writes metrics.jsonl records 10 s apart, done.json files and evaluation responses, like a
  run would."""

  def __init__(self, workdir):
    self.workdir = str(workdir)
    self.time = 1000.0
    self.lines = []

  def record(self, stage: str, step: int, **metrics) -> None:
    self.lines.append(json.dumps({"stage": stage, "step": step, "time": self.time, **metrics}))
    self.time += 10.0

  def stage_file(self, stage: str, name: str) -> str:
    os.makedirs(os.path.join(self.workdir, "stages", stage), exist_ok=True)
    return os.path.join(self.workdir, "stages", stage, name)

  def done(self, stage: str, kind: str, **summary) -> None:
    if stage in WALL:
      summary["wall_s"] = WALL[stage]
    with open(self.stage_file(stage, "done.json"), "w") as f:
      json.dump({"stage": stage, "kind": kind, **summary}, f)

  def jsonl(self, stage: str, name: str, lines: list[dict]) -> None:
    with open(self.stage_file(stage, name), "w") as f:
      f.write("".join(json.dumps(line) + "\n" for line in lines))

  def flush(self) -> None:
    with open(os.path.join(self.workdir, "metrics.jsonl"), "w") as f:
      f.write("\n".join(self.lines) + "\n")

  def sft(self, name: str = "sft") -> None:
    for step, t in enumerate(SFT_TIMES, 1):
      self.record(name, step, **{"sft/loss": 2.0 / step, "time/sample_s": t})
    self.done(name, "sft")

  def eval(self, name: str, verdicts: dict[int, str] | None = None) -> None:
    metrics = {"eval/accuracy": 0.5, "eval/format": 1.0, "eval/length_mean": 30.0,
               "eval/truncated_rate": 0.0, "eval/count": 16, "time/sample_s": 0.05}
    self.record(name, 0, **metrics)
    self.jsonl(name, "responses.jsonl", responses(EVALS[name]))
    if verdicts is not None:
      self.jsonl(name, "judge_verdicts.jsonl",
                 [{"index": i, "verdict": v} for i, v in sorted(verdicts.items())])
    self.done(name, "eval", metrics=metrics)

  def grpo(self, name: str) -> None:
    for r, t in enumerate(GRPO_PROMPT_TIMES[name]):
      self.record(name, r + 1, **{"grpo/loss": 0.1})
      self.record(name, r + 1, **{"grpo/round": r, "reward/mean": 0.5, "reward/accuracy": 0.1 * r,
                                  "reward/format": 1.0, "response/length_mean": 30.0 + r,
                                  "response/truncated_rate": 0.0,
                                  "response/inconsistency_rate": None, "time/prompt_s": t,
                                  "time/sample_s": t / G, "time/generate_s": t / 2,
                                  "time/update_s": t / 2})
    self.done(name, "grpo", rounds=len(GRPO_PROMPT_TIMES[name]))

  def verifier(self) -> None:
    metrics = {"verifier/rollouts": 64, "verifier/prompts": 16, "verifier/judged": 12,
               "verifier/fallbacks": 1, "verifier/inconsistency_rate": 0.25,
               "verifier/judge_agreement": 0.75, "verifier/correct_rate": 0.5,
               "verifier/good_rate": 0.375,
               **{f"verifier/pairs_{f}": n for f, n in FAMILIES.items()},
               "verifier/pairs_total": sum(FAMILIES.values()), "judge/heldout_agreement": 0.875,
               "judge/heldout_count": 8, "judge/served": 1, "judge/trusted": 1,
               "verifier/easy_prompts": 3,
               "verifier/discarded_prompts": 2, "time/sample_s": 0.02}
    self.record("verifier", 0, **metrics)
    self.done("verifier", "verifier", metrics=metrics)

  def dpo(self) -> None:
    for step, t in enumerate(DPO_TIMES, 1):
      self.record("dpo", step, **{"dpo/loss": 0.69, "dpo/reward_accuracy": 0.5,
                                  "time/sample_s": t})
    self.done("dpo", "dpo", pairs=sum(FAMILIES.values()), pair_families=FAMILIES)

  def judge_eval(self) -> None:
    metrics = {"judge/heldout_agreement": 0.93, "judge/heldout_count": 200}
    self.record("judge_eval", 0, **metrics)
    self.done("judge_eval", "judge_eval", metrics=metrics)


def responses(prompts: list[list[tuple[str, int, int]]]) -> list[dict]:
  return [{"prompt_id": f"p{p}", "sample": s, "text": TEXTS[kind], "length": length,
           "truncated": False, "rewards": {"accuracy": float(acc), "format": 0.5},
           "task": "synthetic"}
          for p, samples in enumerate(prompts) for s, (kind, acc, length) in enumerate(samples)]


def full_run(workdir) -> FakeRun:
  run = FakeRun(workdir)
  run.sft()
  run.eval("eval_sft")
  run.sft("judge")                      # the judge: an sft stage whose policy is not handed on
  run.grpo("grpo")
  run.eval("eval_grpo")
  run.verifier()
  run.dpo()
  run.eval("eval_dpo", VERDICTS)
  run.grpo("grpo_2")
  run.eval("eval")
  run.judge_eval()
  run.flush()
  return run


def mean(values):
  return sum(values) / len(values)


def reference_se(clusters, values) -> float:
  """The cluster-robust SE of a mean, from per-response residuals summed by cluster (numpy)."""
  x = np.asarray(values, float)
  ids = np.unique(np.asarray(clusters), return_inverse=True)[1]
  scores = np.bincount(ids, weights=x - x.mean())
  c = scores.size
  return float(np.sqrt(c / (c - 1) * np.sum(scores ** 2)) / x.size)


def strict_json(path):
  def refuse(name):
    raise ValueError(f"{path}: {name} is not JSON")
  with open(path) as f:
    return json.load(f, parse_constant=refuse)


# -------------------------------------------------------------------------------------------------
# The cluster-robust standard error

def test_cluster_mean_by_hand():
  # a: [1, 0], b: [1, 1, 1], c: [0]; r = 4/6; y_c - r n_c = -1/3, 1, -2/3; sum of squares 14/9.
  estimate = cluster_mean(list("aabbbc"), [1, 0, 1, 1, 1, 0])
  assert estimate.mean == pytest.approx(2 / 3)
  assert estimate.se == pytest.approx(math.sqrt(3 / 2 * 14 / 9) / 6)
  assert estimate.count == 6


def test_cluster_mean_matches_independent_formulas():
  rng = np.random.default_rng(0)
  sizes = [1, 4, 2, 7, 3]                                     # unequal clusters
  clusters = [c for c, n in enumerate(sizes) for _ in range(n)]
  values = rng.normal(size=len(clusters)).tolist()
  assert cluster_mean(clusters, values).se == pytest.approx(reference_se(clusters, values))
  # Equal clusters: the SE of the mean of the cluster means.
  values = rng.normal(size=(6, 3))
  estimate = cluster_mean(np.repeat(np.arange(6), 3).tolist(), values.reshape(-1).tolist())
  assert estimate.se == pytest.approx(values.mean(1).std(ddof=1) / math.sqrt(6))


def test_cluster_mean_with_too_few_clusters():
  one = cluster_mean(["a", "a", "a"], [1, 0, 1])
  assert one.mean == pytest.approx(2 / 3) and math.isnan(one.se)
  empty = cluster_mean([], [])
  assert math.isnan(empty.mean) and math.isnan(empty.se) and empty.count == 0


# -------------------------------------------------------------------------------------------------
# report.json

def test_report_json_evaluations(tmp_path):
  full_run(tmp_path)
  write_report(str(tmp_path), ORDER)
  summary = strict_json(tmp_path / SUMMARY_FILE)
  evaluations = summary["evaluations"]
  assert [(e["stage"], e["follows"]) for e in evaluations] == [
      ("eval_sft", "sft"), ("eval_grpo", "grpo"), ("eval_dpo", "dpo"), ("eval", "grpo_2")]
  assert list(evaluations[0]) == [
      "stage", "follows", "accuracy", "accuracy_se", "length_mean", "length_se",
      "inconsistency_rule", "inconsistency_rule_se", "inconsistency_judge",
      "inconsistency_judge_se", "conclusion_rate", "conclusion_rate_se", "examples",
      "judge_unknown"]

  for e in evaluations:
    samples = [(p, *s) for p, row in enumerate(EVALS[e["stage"]]) for s in row]
    clusters = [p for p, *_ in samples]
    accuracy = [acc for _, _, acc, _ in samples]
    lengths = [n for _, _, _, n in samples]
    ruled = [(p, kind != "yes") for p, kind, _, _ in samples if kind != "bare"]
    concluded = [kind in ("yes", "no") for _, kind, _, _ in samples]
    assert e["examples"] == 16
    assert e["accuracy"] == pytest.approx(mean(accuracy))
    assert e["accuracy_se"] == pytest.approx(reference_se(clusters, accuracy))
    assert e["length_mean"] == pytest.approx(mean(lengths))
    assert e["length_se"] == pytest.approx(reference_se(clusters, lengths))
    assert e["inconsistency_rule"] == pytest.approx(mean([v for _, v in ruled]))
    assert e["inconsistency_rule_se"] == pytest.approx(
        reference_se([p for p, _ in ruled], [v for _, v in ruled]))
    assert e["conclusion_rate"] == pytest.approx(mean(concluded))
    assert e["conclusion_rate_se"] == pytest.approx(reference_se(clusters, concluded))
  # eval_sft by hand: a silent reasoning counts as inconsistent, a missing think is left out.
  assert evaluations[0]["inconsistency_rule"] == pytest.approx(4 / 15)
  assert evaluations[0]["conclusion_rate"] == pytest.approx(13 / 16)

  # The judge: 15 known verdicts on eval_dpo (index 7 unknown), 2 of them inconsistent.
  dpo = evaluations[2]
  assert dpo["judge_unknown"] == 1
  assert dpo["inconsistency_judge"] == pytest.approx(2 / 15)
  known = [i for i, v in VERDICTS.items() if v != "unknown"]
  assert dpo["inconsistency_judge_se"] == pytest.approx(
      reference_se([i // 4 for i in known], [VERDICTS[i] == "inconsistent" for i in known]))
  for e in (evaluations[0], evaluations[1], evaluations[3]):
    assert e["inconsistency_judge"] is None and e["inconsistency_judge_se"] is None
    assert e["judge_unknown"] is None


def test_judge_verdicts_that_do_not_fit_the_responses_name_the_file(tmp_path):
  run = FakeRun(tmp_path)
  run.eval("eval_sft", {16: "consistent"})         # 16 responses: indices 0..15
  run.flush()
  with pytest.raises(ValueError, match=r"eval_sft/judge_verdicts.jsonl: .*index 16"):
    write_report(str(tmp_path), ["eval_sft"])


def test_report_json_verifier_cost_wall_and_claims(tmp_path):
  full_run(tmp_path)
  write_report(str(tmp_path), ORDER)
  summary = strict_json(tmp_path / SUMMARY_FILE)

  assert summary["verifier"] == [{
      "stage": "verifier", "pairs_by_family": FAMILIES, "pairs_total": 23,
      "judge_heldout_agreement": 0.875, "judge_agreement_with_rule": 0.75,
      "judge_trusted": True}]
  assert summary["independent_judge"] == {"stage": "judge_eval", "heldout_agreement": 0.93}

  # The first step or round of a stage with more than 2 is left out; grpo_2 has only 2.
  cost = {c["stage"]: c for c in summary["cost"]}
  assert list(cost) == ["sft", "judge", "grpo", "dpo", "grpo_2"]
  assert cost["sft"]["seconds_per_sequence"] == pytest.approx(mean(SFT_TIMES[1:]))
  assert cost["grpo"]["seconds_per_sequence"] == pytest.approx(
      mean(GRPO_PROMPT_TIMES["grpo"][1:]) / G)
  assert cost["grpo_2"]["values_averaged"] == 2
  assert cost["dpo"]["seconds_per_sequence"] == pytest.approx(mean(DPO_TIMES[1:]) / 2)
  grpo_prompt = mean(GRPO_PROMPT_TIMES["grpo"][1:] + GRPO_PROMPT_TIMES["grpo_2"])
  dpo_pair = mean(DPO_TIMES[1:])
  assert summary["dpo_vs_grpo"] == pytest.approx({
      "grpo_s_per_response": grpo_prompt / G, "dpo_s_per_sequence": dpo_pair / 2,
      "per_sequence_ratio": (grpo_prompt / G) / (dpo_pair / 2),
      "grpo_s_per_prompt": grpo_prompt, "dpo_s_per_pair": dpo_pair,
      "per_sample_ratio": grpo_prompt / dpo_pair})

  # done.json's wall_s where recorded; "eval" (no wall_s, one record) falls back to 0.
  assert summary["wall_s"]["stages"] == {**WALL, "eval": 0.0}
  assert summary["wall_s"]["total"] == pytest.approx(sum(WALL.values()))

  # In the fixture: 13/16 conclude; GRPO +0.3125 accuracy; DPO drops rule inconsistency
  # 10/16 -> 1/16 with longer responses and accuracy 0.75 -> 0.75; grpo_2 is the best.
  claims = summary["claims"]
  assert [c["claim"] for c in claims] == [1, 2, 3, 4]
  assert [c["held"] for c in claims] == [True, True, True, True]
  assert "0.8125" in claims[0]["evidence"] and "eval_sft" in claims[0]["evidence"]
  assert "judge inconsistency" in claims[2]["evidence"]


def test_report_markdown_and_plots(tmp_path, monkeypatch):
  full_run(tmp_path)
  figures = {}
  save = report._save

  def keep(fig, plot_dir, name):
    figures[name] = fig
    return save(fig, plot_dir, name)

  monkeypatch.setattr(report, "_save", keep)
  path = write_report(str(tmp_path), ORDER)
  assert path == os.path.join(str(tmp_path), "report.md")
  text = open(path).read()

  assert f"Total wall time: {sum(WALL.values()):.4g} s" in text
  assert "| 10 | eval | eval | done | 1 | 0 (metric records' span) |" in text
  assert "| 4 | grpo | grpo | done | 6 | 90 |" in text
  findings = text.index("## Findings")
  assert findings < text.index("## Accuracy, response length")
  assert "4 of the 4 measured claims held" in text
  assert "- **Claim 2 held.**" in text
  e = strict_json(tmp_path / SUMMARY_FILE)["evaluations"][0]
  assert (f"| eval_sft | after sft | {e['accuracy']:.4g} ± {e['accuracy_se']:.4g} | "
          f"{e['length_mean']:.4g} ± {e['length_se']:.4g} | ") in text
  assert "| eval | after grpo_2 |" in text

  counts = " | ".join(str(n) for n in FAMILIES.values())
  assert "| stage | consistency | penalty | accuracy | reflection | total |" in text
  assert f"| verifier | {counts} | 23 |" in text
  assert f"| dpo (trained on) | {counts} | 23 |" in text
  assert "| verifier | yes (JetStream judge) | yes | 0.875 (n=8) | 0.75 | 1 / 12 |" in text
  assert "Independent judge (stage judge_eval" in text and "agreement 0.93" in text

  grpo = mean(GRPO_PROMPT_TIMES["grpo"][1:] + GRPO_PROMPT_TIMES["grpo_2"])
  dpo = mean(DPO_TIMES[1:])
  assert f"**DPO is {grpo / dpo:.4g}× cheaper per training sample than GRPO**" in text
  assert f"| sft | sft | {mean(SFT_TIMES[1:]):.4g} | 3 |" in text

  names = ("stages", "grpo_curves", "pairs", "judge", "time_per_sequence")
  assert sorted(figures) == sorted(names)
  for name in names:
    assert f"({PLOT_DIR}/{name}.png)" in text
    with open(tmp_path / PLOT_DIR / f"{name}.png", "rb") as f:
      data = f.read()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
  assert not [p for p in os.listdir(tmp_path / PLOT_DIR) if p.endswith(".tmp")]
  assert stage_order_from_metrics(str(tmp_path)) == list(ORDER)

  for name, fig in figures.items():
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
      assert ax.get_xlabel() and ax.get_ylabel(), name
      boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
      assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2)), name
  # One point per evaluation with ±1 SE bars, rule and judge as two series.
  panels = figures["stages"].axes
  assert [ax.get_ylabel() for ax in panels] == ["accuracy (fraction)", "tokens", "rate"]
  assert [len(ax.containers) for ax in panels] == [1, 1, 2]
  assert all(c.has_yerr for ax in panels for c in ax.containers)
  assert "per sequence" in figures["time_per_sequence"].axes[0].get_title()
  assert "seconds per trained sequence" in figures["time_per_sequence"].axes[0].get_ylabel()


def test_partial_run_report(tmp_path):
  """A run stopped during its first GRPO stage, before any verifier or DPO stage."""
  run = FakeRun(tmp_path)
  run.sft()
  run.eval("eval_sft")
  run.record("grpo", 1, **{"grpo/round": 0, "reward/accuracy": 0.1,
                           "response/length_mean": 30.0, "time/sample_s": 0.5})
  run.flush()
  text = open(write_report(str(tmp_path), ("sft", "eval_sft", "grpo", "verifier", "dpo",
                                           "eval"))).read()

  for name, kind in (("grpo", "grpo"), ("verifier", "?"), ("dpo", "?"), ("eval", "?")):
    assert f"| {name} | {kind} | not finished |" in text
  assert "| eval_sft | after sft | 0.4375 ± " in text
  assert "No verifier stage." in text
  assert "**DPO is n/a× cheaper" in text
  assert os.path.exists(tmp_path / PLOT_DIR / "grpo_curves.png")
  assert not os.path.exists(tmp_path / PLOT_DIR / "pairs.png")
  summary = strict_json(tmp_path / SUMMARY_FILE)
  assert [c["held"] for c in summary["claims"]] == [True, None, None, None]
  assert summary["claims"][1]["evidence"] == "Not measured: no first-GRPO evaluation."
  assert summary["verifier"] == [] and summary["independent_judge"] is None


# -------------------------------------------------------------------------------------------------
# Claims on constructed numbers

KINDS = {"sft": "sft", "judge": "sft", "grpo": "grpo", "dpo": "dpo", "grpo_2": "grpo"}


def evaluation(follows: str, **numbers) -> dict:
  e = {"stage": f"eval_{follows}", "follows": follows, "accuracy": 0.5, "accuracy_se": 0.03,
       "length_mean": 30.0, "length_se": 1.0, "inconsistency_rule": 0.4,
       "inconsistency_rule_se": 0.02, "inconsistency_judge": None,
       "inconsistency_judge_se": None, "conclusion_rate": 0.9, "conclusion_rate_se": 0.02,
       "examples": 64, "judge_unknown": None}
  return {**e, **numbers}


def held(evaluations) -> list:
  return [c["held"] for c in evaluate_claims(evaluations, KINDS)]


def loop(warm=None, grpo1=None, dpo=None, grpo2=None) -> list[dict]:
  """Evaluations after sft, grpo, dpo and grpo_2 with the given numbers (defaults: all hold)."""
  return [evaluation("sft", **{"accuracy": 0.3, **(warm or {})}),
          evaluation("grpo", **(grpo1 or {})),
          evaluation("dpo", **{"inconsistency_rule": 0.3, "length_mean": 40.0, **(dpo or {})}),
          evaluation("grpo_2", **(grpo2 or {}))]


def test_milestones_follow_the_training_stages():
  follows = ("initial", "sft", "dpo", "grpo", "grpo_2", "dpo", "sft", "grpo_2")
  evals = [evaluation(f, stage=f"e{i}") for i, f in enumerate(follows)]
  found = milestones(evals, KINDS)
  assert [found[k]["stage"] for k in ("warm", "grpo1", "dpo", "grpo2")] == ["e0", "e3", "e5",
                                                                            "e7"]
  assert milestones(evals[:5], KINDS)["dpo"] is None


def test_all_claims_hold_on_the_defaults():
  assert held(loop()) == [True, True, True, True]


@pytest.mark.parametrize("rate, want", [(0.71, True), (0.70, True), (0.69, False)])
def test_claim_1_warm_start_conclusions(rate, want):
  assert held(loop(warm={"conclusion_rate": rate}))[0] is want


@pytest.mark.parametrize("grpo1, want", [(0.41, True), (0.40, True), (0.39, False)])
def test_claim_2_grpo_gain(grpo1, want):
  assert held(loop(warm={"accuracy": 0.3}, grpo1={"accuracy": grpo1}))[1] is want


@pytest.mark.parametrize("dpo, want", [
    ({"inconsistency_rule": 0.31}, True),         # drop 0.09 >= 3 * hypot(.02, .02) = 0.0849
    ({"inconsistency_rule": 0.32}, False),        # drop 0.08
    ({"inconsistency_rule": 0.2, "inconsistency_rule_se": 0.07}, False),  # 0.2 < 3 * 0.0728
    ({"length_mean": 30.0}, False),               # not longer
    ({"accuracy": 0.46}, True),                   # loss 0.04 <= hypot(.03, .03) = 0.0424
    ({"accuracy": 0.45}, False),                  # loss 0.05
    ({"accuracy_se": None}, None),                # no standard error: undecided
])
def test_claim_3_dpo(dpo, want):
  assert held(loop(dpo=dpo))[2] is want


@pytest.mark.parametrize("grpo2, want", [(0.46, True), (0.45, False), (0.6, True)])
def test_claim_4_second_grpo_keeps_the_gain(grpo2, want):
  # The best of grpo1 (0.5), dpo (0.5) and grpo2; allowed gap hypot(.03, .03) = 0.0424.
  assert held(loop(grpo2={"accuracy": grpo2}))[3] is want


def test_claims_without_their_evaluations_are_not_measured():
  claims = evaluate_claims(loop()[:2], KINDS)
  assert [c["held"] for c in claims] == [True, True, None, None]
  assert claims[2]["evidence"] == "Not measured: no DPO evaluation."
  assert [c["held"] for c in evaluate_claims([], KINDS)] == [None] * 4


def test_claim_evidence_names_the_numbers():
  claims = evaluate_claims(loop(dpo={"inconsistency_judge": 0.1, "inconsistency_judge_se": 0.01},
                                grpo1={"inconsistency_judge": 0.3,
                                       "inconsistency_judge_se": 0.02}), KINDS)
  assert "conclusion rate 0.9 ± 0.02 (needs ≥ 0.70)" in claims[0]["evidence"]
  assert "gain 0.2 (needs ≥ 0.10)" in claims[1]["evidence"]
  assert "rule inconsistency 0.4 ± 0.02 → 0.3 ± 0.02" in claims[2]["evidence"]
  assert "judge inconsistency 0.3 ± 0.02 → 0.1 ± 0.01 (drop 0.2" in claims[2]["evidence"]


# -------------------------------------------------------------------------------------------------
# The stage's wall time and the CLI

def test_done_json_records_the_stage_wall_time(tmp_path):
  ctx = types.SimpleNamespace(stage_dir=lambda name: str(tmp_path / name))
  stage = Stage(ctx, "eval_x")
  time.sleep(0.2)
  stage.finish(None, {"metrics": {}}, export=False)
  with open(tmp_path / "eval_x" / "done.json") as f:
    wall = json.load(f)["wall_s"]
  assert 0.2 <= wall < 30


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_cli_refuses_a_directory_that_is_not_a_run(tmp_path, make):
  workdir = tmp_path / "run"
  if make == "empty":
    workdir.mkdir()
  result = subprocess.run([sys.executable, "-m", "veripo_jax.rl.report",
                           f"--workdir={workdir}"], capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  message = result.stderr.strip().splitlines()[-1]
  assert str(workdir / "metrics.jsonl") in message
  assert not os.path.exists(workdir / "report.md")
  assert os.path.exists(workdir) == (make == "empty")
