"""Run report: the numbers in report.md are the run's own, plots are valid PNGs, a partial run
still gets a report."""

from __future__ import annotations

import json
import os

from veripo_jax.train.report import PLOT_DIR, stage_order_from_metrics, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ORDER = ("sft", "eval_sft", "grpo", "verifier", "dpo", "grpo_2", "eval")
FAMILIES = {"consistency": 7, "penalty": 3, "accuracy": 11, "reflection": 2}
SFT_TIMES = [5.0, 0.2, 0.3, 0.4]
GRPO_PROMPT_TIMES = {"grpo": [10.0, 2.0, 4.0], "grpo_2": [5.0, 3.0]}  # grpo_2: 2 rounds, all count
DPO_TIMES = [3.0, 0.5, 0.7]


class FakeRun:
  """Writes metrics.jsonl records 10 s apart and done.json files, like a run would."""

  def __init__(self, workdir):
    self.workdir = str(workdir)
    self.time = 1000.0
    self.lines = []

  def record(self, stage: str, step: int, **metrics) -> None:
    self.lines.append(json.dumps({"stage": stage, "step": step, "time": self.time, **metrics}))
    self.time += 10.0

  def done(self, stage: str, kind: str, **summary) -> None:
    os.makedirs(os.path.join(self.workdir, "stages", stage))
    with open(os.path.join(self.workdir, "stages", stage, "done.json"), "w") as f:
      json.dump({"stage": stage, "kind": kind, **summary}, f)

  def flush(self) -> None:
    with open(os.path.join(self.workdir, "metrics.jsonl"), "w") as f:
      f.write("\n".join(self.lines) + "\n")

  def sft(self, name: str = "sft") -> None:
    for step, t in enumerate(SFT_TIMES, 1):
      self.record(name, step, **{"sft/loss": 2.0 / step, "time/sample_s": t})

  def eval(self, name: str, accuracy: float, length: float, inconsistency: float | None) -> None:
    metrics = {"eval/accuracy": accuracy, "eval/format": 1.0, "eval/length_mean": length,
               "eval/truncated_rate": 0.0, "eval/count": 16, "time/sample_s": 0.05}
    if inconsistency is not None:
      metrics["eval/inconsistency_rate"] = inconsistency
    self.record(name, 0, **metrics)
    self.done(name, "eval", metrics=metrics)

  def grpo(self, name: str) -> None:
    for r, t in enumerate(GRPO_PROMPT_TIMES[name]):
      self.record(name, r + 1, **{"grpo/loss": 0.1})
      self.record(name, r + 1, **{"grpo/round": r, "reward/mean": 0.5, "reward/accuracy": 0.1 * r,
                                  "reward/format": 1.0, "response/length_mean": 30.0 + r,
                                  "response/truncated_rate": 0.0,
                                  "response/inconsistency_rate": None, "time/prompt_s": t,
                                  "time/sample_s": t / 4, "time/generate_s": t / 2,
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


def full_run(workdir) -> FakeRun:
  run = FakeRun(workdir)
  run.sft()
  run.done("sft", "sft")
  run.eval("eval_sft", 0.25, 40.0, None)
  run.grpo("grpo")
  run.verifier()
  run.dpo()
  run.grpo("grpo_2")
  run.eval("eval", 0.5, 55.5, 0.125)
  run.flush()
  return run


def mean(values):
  return sum(values) / len(values)


def test_full_run_report(tmp_path):
  run = full_run(tmp_path)
  path = write_report(str(tmp_path), ORDER)
  assert path == os.path.join(str(tmp_path), "report.md")
  text = open(path).read()

  assert f"Total wall time: {run.time - 10.0 - 1000.0:.4g} s" in text
  first = text.index("| eval_sft | after sft | 0.25 | 40 | n/a | 1 | 0 | 16 |")
  assert first < text.index("| eval | after grpo_2 | 0.5 | 55.5 | 0.125 | 1 | 0 | 16 |")

  counts = " | ".join(str(n) for n in FAMILIES.values())
  assert "| stage | consistency | penalty | accuracy | reflection | total |" in text
  assert f"| verifier | {counts} | 23 |" in text
  assert f"| dpo (trained on) | {counts} | 23 |" in text
  assert "| verifier | yes (JetStream judge) | yes | 0.875 (n=8) | 0.75 | 1 / 12 |" in text

  # The first step or round of a stage with more than 2 is left out; grpo_2 has only 2.
  grpo = mean(GRPO_PROMPT_TIMES["grpo"][1:] + GRPO_PROMPT_TIMES["grpo_2"])
  dpo = mean(DPO_TIMES[1:])
  assert f"**DPO is {grpo / dpo:.4g}× cheaper per training sample than GRPO**" in text
  assert f"| sft | sft | {mean(SFT_TIMES[1:]):.4g} | s per example | 3 |" in text
  assert f"| grpo | grpo | {mean(GRPO_PROMPT_TIMES['grpo'][1:]) / 4:.4g} | s per response" in text

  for name in ("stages", "grpo_curves", "pairs", "judge", "time_per_sample"):
    assert f"({PLOT_DIR}/{name}.png)" in text
    with open(tmp_path / PLOT_DIR / f"{name}.png", "rb") as f:
      data = f.read()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
  assert not [p for p in os.listdir(tmp_path / PLOT_DIR) if p.endswith(".tmp")]
  assert stage_order_from_metrics(str(tmp_path)) == list(ORDER)


def test_partial_run_report(tmp_path):
  """A run stopped during its first GRPO stage, before any verifier or DPO stage."""
  run = FakeRun(tmp_path)
  run.sft()
  run.done("sft", "sft")
  run.eval("eval_sft", 0.25, 40.0, None)
  run.record("grpo", 1, **{"grpo/round": 0, "reward/accuracy": 0.1,
                           "response/length_mean": 30.0, "time/sample_s": 0.5})
  run.flush()
  text = open(write_report(str(tmp_path), ("sft", "eval_sft", "grpo", "verifier", "dpo",
                                           "eval"))).read()

  for name, kind in (("grpo", "grpo"), ("verifier", "?"), ("dpo", "?"), ("eval", "?")):
    assert f"| {name} | {kind} | not finished |" in text
  assert "| eval_sft | after sft | 0.25 | 40 | n/a |" in text
  assert "No verifier stage." in text
  assert "**DPO is n/a× cheaper" in text
  assert os.path.exists(tmp_path / PLOT_DIR / "grpo_curves.png")
  assert not os.path.exists(tmp_path / PLOT_DIR / "pairs.png")
