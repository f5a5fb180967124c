"""Run report: `WORKDIR/report.json`, `WORKDIR/report.md` and PNG plots under `WORKDIR/report/`.

The paper's Figure 1 in miniature: accuracy, response length, inconsistency and conclusion rates
after each training stage with cluster-robust standard errors, the four claims those numbers
test (held or not, with the evidence), the GRPO curves, the verifier's pairs and judge, and what
each training stage cost per trained sequence. `report.json` is the machine-readable summary;
`report.md` presents it. Every number is read from the run's files (`metrics.jsonl`, and per
stage `done.json`, an evaluation's `responses.jsonl` and `judge_verdicts.jsonl`), so the report
can be rebuilt at any time, also for a run that has not finished (missing numbers: null / n/a).

CLI: `python -m veripo_jax.rl.report --workdir=DIR [--stages=a,b,c]`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from veripo_jax.fileio import read_jsonl, write_json_atomic, write_text_atomic
from veripo_jax.rl.artifacts import DONE_FILE, RESPONSES_FILE, VERDICTS_FILE, stage_dir
from veripo_jax.train.metrics import METRICS_FILE, read_metrics
from veripo_jax.rl.claims import evaluate_claims
from veripo_jax.rl.report_numbers import NA, fmt, mean, num, pm, ratio, se_key
from veripo_jax.rl.stage_kinds import kind_of_metric, step_times, training_kinds
from veripo_jax.rl.stats import evaluation_stats

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

  @property
  def wall_recorded(self) -> bool:
    return (self.done or {}).get("wall_s") is not None

  def wall_s(self) -> float | None:
    """done.json's `wall_s`; else (an unfinished stage, an older run) the span of its metric
    record times, which misses the work before the first record (0 for one record)."""
    if self.wall_recorded:
      return float(self.done["wall_s"])
    times = [r["time"] for r in self.records if r.get("time") is not None]
    return max(times) - min(times) if times else None


def write_report(workdir: str, stage_order: Sequence[str]) -> str:
  """Writes `report.json`, `report.md` and its plots (each atomically); returns report.md's
  path."""
  records = read_metrics(workdir)
  stages = [_load_stage(workdir, name, records) for name in stage_order]
  summary = summarize(workdir, stages)
  write_json_atomic(os.path.join(workdir, SUMMARY_FILE), _jsonable(summary))
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


def stage_order_from_metrics(workdir: str) -> list[str]:
  """The stages in the order of their first metric record (the CLI's default)."""
  return list(dict.fromkeys(r["stage"] for r in read_metrics(workdir)))


def summarize(workdir: str, stages: list[StageData]) -> dict:
  """The report.json object; a missing number is NaN here and null in the file."""
  evaluations = [_evaluation(workdir, stages, s) for s in _of_kind(stages, "eval")]
  return {"evaluations": evaluations,
          "verifier": [_verifier(s) for s in _of_kind(stages, "verifier")],
          "independent_judge": _independent_judge(stages),
          "cost": [_cost_entry(s) for s in stages if s.kind in training_kinds()],
          "dpo_vs_grpo": _dpo_vs_grpo(stages),
          "claims": evaluate_claims(evaluations, {s.name: s.kind for s in stages}),
          "wall_s": _wall(stages)}


# -------------------------------------------------------------------------------------------------
# Loading and formatting

def _load_stage(workdir: str, name: str, records: list[dict]) -> StageData:
  """The kind comes from done.json; an unfinished stage's from its metric names, if any."""
  path = os.path.join(stage_dir(workdir, name), DONE_FILE)
  done = None
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      done = json.load(f)
  own = [r for r in records if r.get("stage") == name]
  kind = (done or {}).get("kind") or _kind_from_metrics(own)
  return StageData(name, kind, done, own)


def _kind_from_metrics(records: list[dict]) -> str:
  for record in records:
    for key in record:
      kind = kind_of_metric(key)
      if kind:
        return kind
  return "?"


def _read_jsonl(path: str) -> list[dict] | None:
  """The JSON lines of `path`; None when there is no such file."""
  return read_jsonl(path) if os.path.exists(path) else None


def _jsonable(value):
  """`value` with NaN and infinities as None (valid JSON: null), through dicts and lists."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  return value


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _of_kind(stages: list[StageData], kind: str) -> list[StageData]:
  return [s for s in stages if s.kind == kind]


def _follows(stages: list[StageData], stage: StageData) -> str | None:
  """The training stage (sft, grpo, dpo) last before `stage`, by name; None if there is none."""
  trained = [s.name for s in stages[:stages.index(stage)] if s.kind in training_kinds()]
  return trained[-1] if trained else None


def _follows_label(evaluation: dict) -> str:
  follows = evaluation["follows"]
  return follows if follows == "initial" else f"after {follows}"


# -------------------------------------------------------------------------------------------------
# report.json's parts

def _evaluation(workdir: str, stages: list[StageData], stage: StageData) -> dict:
  """An eval stage's numbers from its responses (all NaN while it has none)."""
  directory = os.path.join(workdir, "stages", stage.name)
  responses = _read_jsonl(os.path.join(directory, RESPONSES_FILE))
  verdicts_path = os.path.join(directory, VERDICTS_FILE)
  verdicts = _read_jsonl(verdicts_path) if responses is not None else None
  try:
    stats = evaluation_stats(responses or [], verdicts)
  except ValueError as e:                  # verdicts that do not fit the responses
    raise ValueError(f"{verdicts_path}: {e}") from e
  return {"stage": stage.name, "follows": _follows(stages, stage) or "initial", **stats}


def _verifier(stage: StageData) -> dict:
  values = stage.values()
  families = {k.removeprefix("verifier/pairs_"): n for k, n in values.items()
              if k.startswith("verifier/pairs_") and k != "verifier/pairs_total"}
  trusted = values.get("judge/trusted")
  return {"stage": stage.name, "pairs_by_family": families,
          "pairs_total": values.get("verifier/pairs_total"),
          "judge_heldout_agreement": values.get("judge/heldout_agreement"),
          "judge_agreement_with_rule": values.get("verifier/judge_agreement"),
          "judge_trusted": None if trusted is None else bool(trusted)}


def _independent_judge(stages: list[StageData]) -> dict | None:
  """The first finished judge_eval stage's held-out agreement; None without one."""
  done = [s for s in _of_kind(stages, "judge_eval") if s.done is not None]
  if not done:
    return None
  return {"stage": done[0].name,
          "heldout_agreement": done[0].values().get("judge/heldout_agreement")}


def _sequence_times(stage: StageData) -> list[float]:
  """A training stage's seconds per trained sequence, one value per timed step or round."""
  for metric, sequences in step_times(stage.kind):
    values = stage.timed(metric)
    if values:
      return [v / sequences for v in values]
  return []


def _cost_entry(stage: StageData) -> dict:
  values = _sequence_times(stage)
  return {"stage": stage.name, "kind": stage.kind, "seconds_per_sequence": mean(values),
          "values_averaged": len(values)}


def _dpo_vs_grpo(stages: list[StageData]) -> dict:
  """GRPO's and DPO's time per trained sequence and per training sample (a GRPO prompt with its
  G responses, a DPO pair), each the mean over all their stages' timed rounds or steps."""
  grpo, dpo = _of_kind(stages, "grpo"), _of_kind(stages, "dpo")
  per_response = mean([v for s in grpo for v in _sequence_times(s)])
  per_sequence = mean([v for s in dpo for v in _sequence_times(s)])
  per_prompt = mean([v for s in grpo for v in s.timed("time/prompt_s")])
  per_pair = mean([v for s in dpo for v in s.timed("time/sample_s")])
  return {"grpo_s_per_response": per_response, "dpo_s_per_sequence": per_sequence,
          "per_sequence_ratio": ratio(per_response, per_sequence),
          "grpo_s_per_prompt": per_prompt, "dpo_s_per_pair": per_pair,
          "per_sample_ratio": ratio(per_prompt, per_pair)}


def _wall(stages: list[StageData]) -> dict:
  per_stage = {s.name: s.wall_s() for s in stages}
  known = [v for v in per_stage.values() if v is not None]
  return {"stages": per_stage, "total": sum(known) if known else None}


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
  grpo = [(s, s.rounds()) for s in _of_kind(stages, "grpo")]
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
  dpos = [s for s in _of_kind(stages, "dpo") if s.done is not None]
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
  verifiers = _of_kind(stages, "verifier")
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
