"""Run report: `WORKDIR/report.json`, `WORKDIR/report.md` and PNG plots under `WORKDIR/report/`.

The paper's Figure 1 in miniature: accuracy, response length, inconsistency and conclusion rates
after each training stage with cluster-robust standard errors, the four claims those numbers
test (held or not, with the evidence), the GRPO curves, the verifier's pairs and judge, and what
each training stage cost per trained sequence. `report.json` is the machine-readable summary;
`report.md` presents it. The numbers come from the run's files (`rl.run_summary`), so the report
can be rebuilt at any time, also for a run that has not finished (missing numbers: null / n/a).

CLI: `python -m veripo_jax.rl.report --workdir=DIR [--stages=a,b,c]`.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from veripo_jax.fileio import write_json_atomic, write_text_atomic
from veripo_jax.rl.report_numbers import NA, fmt, num, pm, se_key
from veripo_jax.rl.run_summary import (StageData, jsonable, load_stage, of_kind,
                                       stage_order_from_metrics, summarize)
from veripo_jax.train.metrics import METRICS_FILE, read_metrics

REPORT_FILE = "report.md"
SUMMARY_FILE = "report.json"
PLOT_DIR = "report"
# The per-evaluation figure: (title, y-axis label, ((number, series label), ...)) per panel.
PANELS = (("accuracy", "accuracy (fraction)", (("accuracy", None),)),
          ("response length", "tokens", (("length_mean", None),)),
          ("inconsistency rate", "rate", (("inconsistency_rule", "rule"),
                                          ("inconsistency_judge", "judge"))))
GRPO_CURVES = (("accuracy reward", "reward/accuracy", "accuracy reward (fraction)"),
               ("response length", "response/length_mean", "tokens"),
               ("inconsistency rate", "response/inconsistency_rate", "rate (rule)"))


def write_report(workdir: str, stage_order: Sequence[str]) -> str:
  """Writes `report.json`, `report.md` and its plots (each atomically); returns report.md's
  path."""
  records = read_metrics(workdir)
  stages = [load_stage(workdir, name, records) for name in stage_order]
  summary = summarize(workdir, stages)
  write_json_atomic(os.path.join(workdir, SUMMARY_FILE), jsonable(summary))
  plot_dir = os.path.join(workdir, PLOT_DIR)
  os.makedirs(plot_dir, exist_ok=True)
  sections = [_header(workdir, stages, summary["wall_s"]), _findings(summary["claims"]),
              _headline(stages, summary["evaluations"], plot_dir), _grpo(stages, plot_dir),
              _pairs(stages, summary["verifier"], plot_dir),
              _judge(stages, summary["independent_judge"], plot_dir),
              _cost(summary["cost"], summary["dpo_vs_grpo"], plot_dir)]
  path = os.path.join(workdir, REPORT_FILE)
  write_text_atomic(path, "\n\n".join("\n".join(lines) for lines in sections) + "\n")
  return path


# -------------------------------------------------------------------------------------------------
# Loading and formatting

def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _follows_label(evaluation: dict) -> str:
  follows = evaluation["follows"]
  return follows if follows == "initial" else f"after {follows}"


# -------------------------------------------------------------------------------------------------
# report.json's parts

# -------------------------------------------------------------------------------------------------
# Plots

def _figure(panels: int) -> tuple[Figure, list]:
  """A small figure of `panels` side by side, drawn by Agg without touching pyplot's state."""
  fig = Figure(figsize=(10, 3.4), dpi=100, layout="constrained")
  FigureCanvasAgg(fig)
  return fig, list(fig.subplots(1, panels, squeeze=False)[0])


def _save(fig: Figure, plot_dir: str, name: str) -> str:
  """Saves atomically (temporary name, then rename); returns the Markdown image line."""
  path = os.path.join(plot_dir, f"{name}.png")
  fig.savefig(f"{path}.tmp", format="png")
  os.replace(f"{path}.tmp", path)
  return f"![{name}]({PLOT_DIR}/{name}.png)"


def _xticks(ax, labels: Sequence[str]) -> None:
  """Category labels, slanted so that long or many names do not run into each other."""
  ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=30, ha="right",
                rotation_mode="anchor")


def _bars(ax, groups: Sequence[str], series: dict[str, Sequence[float]]) -> None:
  """Grouped bars: one group per entry of `groups`, one bar per series in each group."""
  width = 0.8 / max(1, len(series))
  for i, (label, values) in enumerate(series.items()):
    shift = (i - (len(series) - 1) / 2) * width
    ax.bar([g + shift for g in range(len(groups))], values, width, label=label)
  _xticks(ax, groups)
  if len(series) > 1:
    ax.legend(fontsize=7)


def _label(ax, title: str, xlabel: str, ylabel: str) -> None:
  ax.set_title(title, fontsize=9)
  ax.set_xlabel(xlabel, fontsize=8)
  ax.set_ylabel(ylabel, fontsize=8)


# -------------------------------------------------------------------------------------------------
# Sections: each returns its Markdown lines and saves its plot

def _header(workdir: str, stages: list[StageData], wall: dict) -> list[str]:
  rows = []
  for i, s in enumerate(stages, 1):
    seconds = wall["stages"][s.name]
    note = "" if s.wall_recorded or seconds is None else " (metric records' span)"
    rows.append([str(i), s.name, s.kind, "done" if s.done is not None else "not finished",
                 str(len(s.records)), fmt(seconds) + note])
  return (["# VerIPO run report", "", f"Workdir: `{workdir}`", "",
           f"Total wall time: {fmt(wall['total'])} s (the sum of the stages' wall times: "
           "done.json's `wall_s`, else the span of the stage's metric records).", ""] +
          _table(["#", "stage", "kind", "status", "metric records", "wall time (s)"], rows))


def _findings(claims: list[dict]) -> list[str]:
  measured = [c for c in claims if c["held"] is not None]
  verdicts = {True: "held", False: "did not hold", None: "not measured"}
  return (["## Findings", "",
           f"{sum(c['held'] for c in measured)} of the {len(measured)} measured claims held "
           f"({len(claims) - len(measured)} not measured); ± values are standard errors "
           "clustered by prompt.", ""] +
          [f"- **Claim {c['claim']} {verdicts[c['held']]}.** {c['text']} {c['evidence']}"
           for c in claims])


def _headline(stages: list[StageData], evaluations: list[dict], plot_dir: str) -> list[str]:
  lines = ["## Accuracy, response length and consistency per evaluation", "",
           "Mean ± standard error over each evaluation's responses, clustered by prompt. Rule "
           "(judge) inconsistency: share of the responses with a think and an answer whose "
           "reasoning does not conclude with the answer by the rule (by the independent judge; "
           "unparseable verdicts left out and counted as judge unknown). Conclusion rate: share "
           "of all responses whose reasoning states a conclusion the rule reads.", ""]
  if not evaluations:
    return lines + ["No evaluation stage."]
  values = {s.name: s.values() for s in stages}
  rows = [[e["stage"], _follows_label(e)] +
          [pm(e, k) for k in ("accuracy", "length_mean", "inconsistency_rule",
                               "inconsistency_judge", "conclusion_rate")] +
          [fmt(values[e["stage"]].get(k)) for k in ("eval/format", "eval/truncated_rate")] +
          [fmt(e["examples"]), fmt(e["judge_unknown"])] for e in evaluations]
  lines += _table(["stage", "follows", "accuracy", "response length (tokens)",
                   "rule inconsistency", "judge inconsistency", "conclusion rate", "format",
                   "truncated rate", "examples", "judge unknown"], rows)
  fig, axes = _figure(len(PANELS))
  xs = range(len(evaluations))
  for ax, (title, ylabel, series) in zip(axes, PANELS):
    for j, (key, label) in enumerate(series):
      shift = (j - (len(series) - 1) / 2) * 0.1
      ax.errorbar([x + shift for x in xs], [num(e[key]) for e in evaluations],
                  yerr=[num(e[se_key(key)]) for e in evaluations], fmt="o-", capsize=3,
                  markersize=4, label=label)
    if len(series) > 1:
      ax.legend(fontsize=7)
    _xticks(ax, [_follows_label(e) for e in evaluations])
    _label(ax, f"{title} (±1 SE)", "evaluation", ylabel)
  return lines + ["", _save(fig, plot_dir, "stages")]


def _grpo(stages: list[StageData], plot_dir: str) -> list[str]:
  lines = ["## GRPO rounds", ""]
  grpo = [(s, s.rounds()) for s in of_kind(stages, "grpo")]
  grpo = [(s, rounds) for s, rounds in grpo if rounds]
  if not grpo:
    return lines + ["No GRPO rounds recorded."]
  rows = [[s.name, str(len(rounds))] +
          [f"{fmt(rounds[0].get(k))} → {fmt(rounds[-1].get(k))}" for _, k, _ in GRPO_CURVES]
          for s, rounds in grpo]
  lines += _table(["stage", "rounds"] + [f"{t} (first → last)" for t, _, _ in GRPO_CURVES],
                  rows)
  fig, axes = _figure(len(GRPO_CURVES))
  for ax, (title, key, ylabel) in zip(axes, GRPO_CURVES):
    start = 0
    for s, rounds in grpo:
      xs = range(start + 1, start + len(rounds) + 1)
      ax.plot(xs, [num(r.get(key)) for r in rounds], ".-", color="C0", markersize=3)
      ax.axvline(start + 0.5, color="gray", linestyle="--", linewidth=0.8)
      ax.text(start + 0.6, 0.98, s.name, transform=ax.get_xaxis_transform(), fontsize=7,
              va="top")
      start += len(rounds)
    ax.set_xlim(0.5, start + 0.5)  # the whole range even where a metric is all null
    _label(ax, title, "round (GRPO stages in order)", ylabel)
  return lines + ["", _save(fig, plot_dir, "grpo_curves")]


def _pairs(stages: list[StageData], verifiers: list[dict], plot_dir: str) -> list[str]:
  lines = ["## Preference pairs by family", ""]
  if not verifiers:
    return lines + ["No verifier stage."]
  dpos = [s for s in of_kind(stages, "dpo") if s.done is not None]
  families = list(dict.fromkeys([f for v in verifiers for f in v["pairs_by_family"]] +
                                [f for s in dpos for f in s.done.get("pair_families", {})]))
  counts = [[v["pairs_by_family"].get(f) for f in families] for v in verifiers]
  rows = [[v["stage"]] + [fmt(c) for c in row] + [fmt(v["pairs_total"])]
          for v, row in zip(verifiers, counts)]
  rows += [[f"{s.name} (trained on)"] + [fmt(s.done.get("pair_families", {}).get(f))
                                         for f in families] + [fmt(s.done.get("pairs"))]
           for s in dpos]
  lines += _table(["stage"] + families + ["total"], rows)
  fig, axes = _figure(1)
  _bars(axes[0], families,
        {v["stage"]: [num(c) for c in row] for v, row in zip(verifiers, counts)})
  _label(axes[0], "pairs by family", "pair family", "pairs (count)")
  return lines + ["", _save(fig, plot_dir, "pairs")]


def _served(value) -> str:
  if value is None:
    return NA
  return "yes (JetStream judge)" if value else "no (rules only)"


def _trusted(value) -> str:
  if value is None:
    return NA
  return "yes" if value else "no: below min_heldout_agreement, rules judged"


def _judge(stages: list[StageData], independent: dict | None, plot_dir: str) -> list[str]:
  lines = ["## Judge", ""]
  if independent is not None:
    lines += [f"Independent judge (stage {independent['stage']}, the evaluations' judge "
              f"inconsistency): held-out agreement {fmt(independent['heldout_agreement'])}.", ""]
  verifiers = of_kind(stages, "verifier")
  if not verifiers:
    return lines + ["No verifier stage."]
  values = [s.values() for s in verifiers]
  rows = [[s.name, _served(v.get("judge/served")), _trusted(v.get("judge/trusted")),
           f"{fmt(v.get('judge/heldout_agreement'))} (n={fmt(v.get('judge/heldout_count'))})",
           fmt(v.get("verifier/judge_agreement")),
           f"{fmt(v.get('verifier/fallbacks'))} / {fmt(v.get('verifier/judged'))}",
           fmt(v.get("verifier/inconsistency_rate")), fmt(v.get("verifier/correct_rate")),
           fmt(v.get("verifier/easy_prompts")), fmt(v.get("verifier/discarded_prompts"))]
          for s, v in zip(verifiers, values)]
  lines += _table(["stage", "judge served", "judge trusted", "held-out agreement with ground truth",
                   "agreement with rules", "fallbacks / judged", "inconsistency rate",
                   "correct rate", "easy prompts", "discarded prompts"], rows)
  fig, axes = _figure(1)
  _bars(axes[0], [s.name for s in verifiers],
        {"held-out agreement": [num(v.get("judge/heldout_agreement")) for v in values],
         "agreement with rules": [num(v.get("verifier/judge_agreement")) for v in values]})
  axes[0].set_ylim(0, 1.05)
  _label(axes[0], "judge agreement", "verifier stage", "agreement (fraction)")
  return lines + ["", _save(fig, plot_dir, "judge")]


def _cost(cost: list[dict], ratio: dict, plot_dir: str) -> list[str]:
  lines = ["## Cost", "",
           "Seconds per trained sequence (an SFT example, a GRPO response, one of a DPO pair's "
           "two responses). Means leave out each stage's first step or round when it has more "
           "than 2 (compilation).", ""]
  lines += _table(["stage", "kind", "s per trained sequence", "values averaged"],
                  [[c["stage"], c["kind"], fmt(c["seconds_per_sequence"]),
                    str(c["values_averaged"])] for c in cost])
  lines += ["", f"GRPO: {fmt(ratio['grpo_s_per_prompt'])} s per prompt, "
            f"{fmt(ratio['grpo_s_per_response'])} s per response (generation, scoring and "
            f"update). DPO: {fmt(ratio['dpo_s_per_pair'])} s per pair, "
            f"{fmt(ratio['dpo_s_per_sequence'])} s per sequence.", "",
            f"**DPO is {fmt(ratio['per_sample_ratio'])}× cheaper per training sample than "
            "GRPO** (GRPO s/prompt ÷ DPO s/pair); per trained sequence "
            f"{fmt(ratio['per_sequence_ratio'])}×."]
  plotted = [c for c in cost if math.isfinite(c["seconds_per_sequence"])]
  if plotted:
    fig, axes = _figure(1)
    _bars(axes[0], [c["stage"] for c in plotted],
          {"time": [c["seconds_per_sequence"] for c in plotted]})
    axes[0].bar_label(axes[0].containers[0], fmt="%.3g", fontsize=7)
    _label(axes[0], "time per trained sequence; GRPO ÷ DPO = "
           f"{fmt(ratio['per_sequence_ratio'])}× per sequence, "
           f"{fmt(ratio['per_sample_ratio'])}× per sample (prompt vs pair)",
           "training stage", "seconds per trained sequence")
    lines += ["", _save(fig, plot_dir, "time_per_sequence")]
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
    metrics = os.path.join(workdir.value, METRICS_FILE)
    if not os.path.isfile(metrics):
      sys.exit(f"report: {metrics} not found: {workdir.value} is not a run directory")
    print(write_report(workdir.value, stages.value or stage_order_from_metrics(workdir.value)))

  app.run(main)


if __name__ == "__main__":
  _cli()
