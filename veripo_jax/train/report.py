"""Run report: `WORKDIR/report.md` plus PNG plots under `WORKDIR/report/`.

The paper's Figure 1 in miniature (accuracy, response length and inconsistency rate after each
training stage), the GRPO curves, the verifier's pairs and judge, and what each stage cost per
sample. Every number is read from the run's `metrics.jsonl` and `stages/<name>/done.json`, so the
report can be rebuilt at any time, also for a run that has not finished (missing numbers: n/a).

CLI: `python -m veripo_jax.train.report --workdir=DIR [--stages=a,b,c]`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from veripo_jax.fileio import write_text_atomic
from veripo_jax.train.metrics import read_metrics

REPORT_FILE = "report.md"
PLOT_DIR = "report"
KINDS = ("sft", "grpo", "dpo", "eval", "verifier")
UNITS = {"sft": "s per example", "grpo": "s per response", "dpo": "s per pair",
         "eval": "s per response", "verifier": "s per rollout"}
HEADLINE = (("accuracy", "eval/accuracy"), ("response length", "eval/length_mean"),
            ("inconsistency rate", "eval/inconsistency_rate"))
GRPO_CURVES = (("accuracy reward", "reward/accuracy"), ("response length", "response/length_mean"),
               ("inconsistency rate", "response/inconsistency_rate"))
NA = "n/a"


@dataclasses.dataclass
class StageData:
  """One stage of the run: its done.json (None while not finished) and its metric records."""

  name: str
  kind: str
  done: dict | None
  records: list[dict]

  def values(self) -> dict:
    """A one-shot stage's numbers (eval, verifier): done.json's metrics over its last record."""
    last = self.records[-1] if self.records else {}
    return {**last, **(self.done or {}).get("metrics", {})}

  def rounds(self) -> list[dict]:
    return [r for r in self.records if "grpo/round" in r]

  def timed(self, metric: str) -> list[float]:
    """The stage's values of a time metric without the first (compilation) when there are more
    than 2 of them; nulls dropped."""
    values = [r[metric] for r in self.records if metric in r]
    if len(values) > 2:
      values = values[1:]
    return [float(v) for v in values if v is not None]


def write_report(workdir: str, stage_order: Sequence[str]) -> str:
  """Writes `WORKDIR/report.md` and its plots (atomically); returns the report's path."""
  records = read_metrics(workdir)
  stages = [_load_stage(workdir, name, records) for name in stage_order]
  plot_dir = os.path.join(workdir, PLOT_DIR)
  os.makedirs(plot_dir, exist_ok=True)
  lines = _header(workdir, stages, records)
  for section in (_headline, _grpo, _pairs, _judge, _cost):
    lines += [""] + section(stages, plot_dir)
  path = os.path.join(workdir, REPORT_FILE)
  write_text_atomic(path, "\n".join(lines) + "\n")
  return path


def stage_order_from_metrics(workdir: str) -> list[str]:
  """The stages in the order of their first metric record (the CLI's default)."""
  return list(dict.fromkeys(r["stage"] for r in read_metrics(workdir)))


# -------------------------------------------------------------------------------------------------
# Loading and formatting

def _load_stage(workdir: str, name: str, records: list[dict]) -> StageData:
  """The kind comes from done.json; an unfinished stage's from its metric names, if any."""
  path = os.path.join(workdir, "stages", name, "done.json")
  done = None
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      done = json.load(f)
  own = [r for r in records if r.get("stage") == name]
  kind = (done or {}).get("kind") or _kind_from_metrics(own)
  return StageData(name, kind, done, own)


def _kind_from_metrics(records: list[dict]) -> str:
  prefixes = {"judge": "verifier", **{k: k for k in KINDS}}
  for record in records:
    for key in record:
      kind = prefixes.get(key.split("/")[0]) if "/" in key else None
      if kind:
        return kind
  return "?"


def _num(value) -> float:
  """A float; None and missing values are NaN."""
  return math.nan if value is None else float(value)


def _fmt(value) -> str:
  """Counts as integers, other numbers to 4 significant digits, missing ones as n/a."""
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  value = _num(value)
  return f"{value:.4g}" if math.isfinite(value) else NA


def _mean(values: Sequence[float]) -> float:
  return sum(values) / len(values) if values else math.nan


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _of_kind(stages: list[StageData], kind: str) -> list[StageData]:
  return [s for s in stages if s.kind == kind]


def _after(stages: list[StageData], stage: StageData) -> str:
  """The training stage an eval stage follows: the last one before it that is neither an eval
  nor a verifier stage."""
  before = stages[:stages.index(stage)]
  trained = [s.name for s in before if s.kind not in ("eval", "verifier")]
  return f"after {trained[-1]}" if trained else "initial"


# -------------------------------------------------------------------------------------------------
# Plots

def _figure(panels: int) -> tuple[Figure, list]:
  """A small figure of `panels` side by side, drawn by Agg without touching pyplot's state."""
  fig = Figure(figsize=(9, 3), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _save(fig: Figure, plot_dir: str, name: str) -> str:
  """Saves atomically (temporary name, then rename); returns the Markdown image line."""
  path = os.path.join(plot_dir, f"{name}.png")
  fig.savefig(f"{path}.tmp", format="png")
  os.replace(f"{path}.tmp", path)
  return f"![{name}]({PLOT_DIR}/{name}.png)"


def _bars(ax, groups: Sequence[str], series: dict[str, Sequence[float]]) -> None:
  """Grouped bars: one group per entry of `groups`, one bar per series in each group."""
  width = 0.8 / max(1, len(series))
  for i, (label, values) in enumerate(series.items()):
    shift = (i - (len(series) - 1) / 2) * width
    ax.bar([g + shift for g in range(len(groups))], values, width, label=label)
  ax.set_xticks(range(len(groups)), groups, fontsize=8)
  if len(series) > 1:
    ax.legend(fontsize=7)


# -------------------------------------------------------------------------------------------------
# Sections: each returns its Markdown lines and saves its plot

def _header(workdir: str, stages: list[StageData], records: list[dict]) -> list[str]:
  times = [r["time"] for r in records if r.get("time") is not None]
  wall = max(times) - min(times) if times else math.nan
  rows = []
  for i, s in enumerate(stages, 1):
    own = [r["time"] for r in s.records if r.get("time") is not None]
    rows.append([str(i), s.name, s.kind, "done" if s.done is not None else "not finished",
                 str(len(s.records)), _fmt(max(own) - min(own) if own else None)])
  return (["# VerIPO run report", "", f"Workdir: `{workdir}`", "",
           f"Total wall time: {_fmt(wall)} s (first to last metrics record).", ""] +
          _table(["#", "stage", "kind", "status", "metric records", "wall time (s)"], rows))


def _headline(stages: list[StageData], plot_dir: str) -> list[str]:
  lines = ["## Accuracy, response length and consistency per evaluation", ""]
  evals = _of_kind(stages, "eval")
  if not evals:
    return lines + ["No evaluation stage."]
  labels = [_after(stages, s) for s in evals]
  values = [s.values() for s in evals]
  rows = [[s.name, label] + [_fmt(v.get(k)) for k in
                             ("eval/accuracy", "eval/length_mean", "eval/inconsistency_rate",
                              "eval/format", "eval/truncated_rate", "eval/count")]
          for s, label, v in zip(evals, labels, values)]
  lines += _table(["stage", "follows", "accuracy", "response length", "inconsistency rate",
                   "format", "truncated rate", "examples"], rows)
  fig, axes = _figure(len(HEADLINE))
  for ax, (title, key) in zip(axes, HEADLINE):
    ax.plot(range(len(evals)), [_num(v.get(key)) for v in values], "o-")
    ax.set_xticks(range(len(evals)), labels, fontsize=8)
    ax.set_title(title, fontsize=9)
  return lines + ["", _save(fig, plot_dir, "stages")]


def _grpo(stages: list[StageData], plot_dir: str) -> list[str]:
  lines = ["## GRPO rounds", ""]
  grpo = [(s, s.rounds()) for s in _of_kind(stages, "grpo")]
  grpo = [(s, rounds) for s, rounds in grpo if rounds]
  if not grpo:
    return lines + ["No GRPO rounds recorded."]
  rows = [[s.name, str(len(rounds))] +
          [f"{_fmt(rounds[0].get(k))} → {_fmt(rounds[-1].get(k))}" for _, k in GRPO_CURVES]
          for s, rounds in grpo]
  lines += _table(["stage", "rounds"] + [f"{t} (first → last)" for t, _ in GRPO_CURVES], rows)
  fig, axes = _figure(len(GRPO_CURVES))
  for ax, (title, key) in zip(axes, GRPO_CURVES):
    start = 0
    for s, rounds in grpo:
      xs = range(start + 1, start + len(rounds) + 1)
      ax.plot(xs, [_num(r.get(key)) for r in rounds], ".-", color="C0", markersize=3)
      ax.axvline(start + 0.5, color="gray", linestyle="--", linewidth=0.8)
      ax.text(start + 0.6, 0.98, s.name, transform=ax.get_xaxis_transform(), fontsize=7,
              va="top")
      start += len(rounds)
    ax.set_xlim(0.5, start + 0.5)  # the whole range even where a metric is all null
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("round", fontsize=8)
  return lines + ["", _save(fig, plot_dir, "grpo_curves")]


def _families(verifiers: list[StageData], dpos: list[StageData]) -> list[str]:
  """Families in order of first appearance: the verifiers' metric names, then DPO's summaries."""
  keys = [k.removeprefix("verifier/pairs_") for s in verifiers for k in s.values()
          if k.startswith("verifier/pairs_") and k != "verifier/pairs_total"]
  keys += [f for s in dpos for f in s.done.get("pair_families", {})]
  return list(dict.fromkeys(keys))


def _pairs(stages: list[StageData], plot_dir: str) -> list[str]:
  lines = ["## Preference pairs by family", ""]
  verifiers = _of_kind(stages, "verifier")
  if not verifiers:
    return lines + ["No verifier stage."]
  dpos = [s for s in _of_kind(stages, "dpo") if s.done is not None]
  families = _families(verifiers, dpos)
  counts = [[s.values().get(f"verifier/pairs_{f}") for f in families] for s in verifiers]
  rows = [[s.name] + [_fmt(c) for c in row] + [_fmt(s.values().get("verifier/pairs_total"))]
          for s, row in zip(verifiers, counts)]
  rows += [[f"{s.name} (trained on)"] + [_fmt(s.done.get("pair_families", {}).get(f))
                                         for f in families] + [_fmt(s.done.get("pairs"))]
           for s in dpos]
  lines += _table(["stage"] + families + ["total"], rows)
  fig, axes = _figure(1)
  _bars(axes[0], families, {s.name: [_num(c) for c in row] for s, row in zip(verifiers, counts)})
  axes[0].set_title("pairs by family", fontsize=9)
  return lines + ["", _save(fig, plot_dir, "pairs")]


def _served(value) -> str:
  if value is None:
    return NA
  return "yes (JetStream judge)" if value else "no (rules only)"


def _trusted(value) -> str:
  if value is None:
    return NA
  return "yes" if value else "no: below min_heldout_agreement, rules judged"


def _judge(stages: list[StageData], plot_dir: str) -> list[str]:
  lines = ["## Judge", ""]
  verifiers = _of_kind(stages, "verifier")
  if not verifiers:
    return lines + ["No verifier stage."]
  values = [s.values() for s in verifiers]
  rows = [[s.name, _served(v.get("judge/served")), _trusted(v.get("judge/trusted")),
           f"{_fmt(v.get('judge/heldout_agreement'))} (n={_fmt(v.get('judge/heldout_count'))})",
           _fmt(v.get("verifier/judge_agreement")),
           f"{_fmt(v.get('verifier/fallbacks'))} / {_fmt(v.get('verifier/judged'))}",
           _fmt(v.get("verifier/inconsistency_rate")), _fmt(v.get("verifier/correct_rate")),
           _fmt(v.get("verifier/easy_prompts")), _fmt(v.get("verifier/discarded_prompts"))]
          for s, v in zip(verifiers, values)]
  lines += _table(["stage", "judge served", "judge trusted", "held-out agreement with ground truth",
                   "agreement with rules", "fallbacks / judged", "inconsistency rate",
                   "correct rate", "easy prompts", "discarded prompts"], rows)
  fig, axes = _figure(1)
  _bars(axes[0], [s.name for s in verifiers],
        {"held-out agreement": [_num(v.get("judge/heldout_agreement")) for v in values],
         "agreement with rules": [_num(v.get("verifier/judge_agreement")) for v in values]})
  axes[0].set_ylim(0, 1.05)
  axes[0].set_title("judge agreement", fontsize=9)
  return lines + ["", _save(fig, plot_dir, "judge")]


def _cost(stages: list[StageData], plot_dir: str) -> list[str]:
  lines = ["## Cost", "",
           "Time means leave out each stage's first step or round when it has more than 2 "
           "(compilation).", ""]
  timed = [(s, s.timed("time/sample_s")) for s in stages]
  rows = [[s.name, s.kind, _fmt(_mean(t)), UNITS.get(s.kind, "s per sample"), str(len(t))]
          for s, t in timed]
  lines += _table(["stage", "kind", "time per sample", "unit", "values averaged"], rows)
  grpo = [v for s in _of_kind(stages, "grpo") for v in s.timed("time/prompt_s")]
  dpo = [v for s in _of_kind(stages, "dpo") for v in s.timed("time/sample_s")]
  ratio = _mean(grpo) / _mean(dpo) if grpo and dpo and _mean(dpo) > 0 else math.nan
  lines += ["", f"GRPO: {_fmt(_mean(grpo))} s per prompt (generation, scoring and update; "
            f"mean of {len(grpo)} rounds). DPO: {_fmt(_mean(dpo))} s per pair (mean of {len(dpo)} "
            "steps).", "",
            f"**DPO is {_fmt(ratio)}× cheaper per training sample than GRPO** "
            "(GRPO s/prompt ÷ DPO s/pair)."]
  plotted = [(s, _mean(t)) for s, t in timed if t]
  if plotted:
    fig, axes = _figure(1)
    _bars(axes[0], [f"{s.name}\n({UNITS.get(s.kind, '?')})" for s, _ in plotted],
          {"time per sample": [m for _, m in plotted]})
    axes[0].set_yscale("log")
    axes[0].set_ylabel("seconds", fontsize=8)
    lines += ["", _save(fig, plot_dir, "time_per_sample")]
  return lines


# -------------------------------------------------------------------------------------------------

def _cli() -> None:
  """Flags defined here, not at import: main.py, which imports this module, has --workdir too."""
  from absl import app, flags
  workdir = flags.DEFINE_string("workdir", None, "Run directory.")
  stages = flags.DEFINE_list("stages", None, "Stage order; default: order of first appearance "
                             "in metrics.jsonl.")

  def main(argv):
    del argv
    if workdir.value is None:
      raise app.UsageError("--workdir is required")
    print(write_report(workdir.value, stages.value or stage_order_from_metrics(workdir.value)))

  app.run(main)


if __name__ == "__main__":
  _cli()
