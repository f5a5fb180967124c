"""`eval_report.json`, `eval_report.md` and `eval_report.png` from a benchmark eval's predictions.

Per benchmark: the official score (100 × the micro-average over scored items, the number VerIPO
reports), items scored, missing (no video) and unreadable, mean response length, the share cut
off at max_new_tokens, and the inconsistency of reasoning with answer by the rule and by the
judge (over responses with both; judge failures fall back to the rule and are counted).
VSI-Bench also gets its per-task-type table and type mean, the number other papers report.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from veripo_jax.eval.benchmarks import BenchmarkData
from veripo_jax.eval.scoring import benchmark_score, vsi_task_table
from veripo_jax.fileio import write_json_atomic, write_text_atomic
from veripo_jax.rl.verifier import INCONSISTENT

# Published numbers under VerIPO's protocol (VSI-Bench, the paper's Figure 1F).
PAPER_SCORES: dict[str, dict[str, float]] = {
    "vsi_bench": {"VerIPO-7B": 41.8, "Qwen2.5-VL-7B": 37.5, "Kimi-VL-A3B": 37.4,
                  "Video-R1-7B": 35.8, "GPT-4o": 34.0, "Gemma3-12B": 32.4},
}
REPORT_JSON, REPORT_MD, REPORT_PNG = "eval_report.json", "eval_report.md", "eval_report.png"


def _rate(flags: Sequence[bool]) -> float | None:
  return float(np.mean(flags)) if flags else None


def benchmark_summary(data: BenchmarkData, records: Sequence[Mapping[str, Any]]) -> dict:
  scored = [r for r in records if "score" in r]
  reasoned = [r for r in scored if r["has_reasoning"]]
  judged = [r for r in reasoned if "judge_verdict" in r]
  out = {
      "benchmark": data.name, "question_file": data.path, "items": data.total,
      "missing_video": data.missing, "unreadable": sum("skipped" in r for r in records),
      "scored": len(scored),
      "score": benchmark_score(r["score"] for r in scored) if scored else None,
      "mean_length": float(np.mean([r["length"] for r in scored])) if scored else None,
      "truncated_rate": _rate([r["truncated"] for r in scored]),
      "with_reasoning": len(reasoned),
      "rule_inconsistency": _rate([r["rule_consistent"] is not True for r in reasoned]),
      "judged": len(judged), "judge_fallbacks": sum(r["judge_fallback"] for r in judged),
      "judge_inconsistency": _rate([r["judge_verdict"] == INCONSISTENT for r in judged]),
      "paper": PAPER_SCORES.get(data.name, {}),
  }
  out["coverage"] = out["scored"] / data.total if data.total else None
  if data.name == "vsi_bench" and scored:
    question = {i.question_id: i.raw_question or i.question for i in data.items}
    out["vsi_task_types"] = vsi_task_table(
        ({"question": question[r["question_id"]]}, r["score"]) for r in scored)
  return out


def summarize(datasets: Sequence[BenchmarkData], predictions: Sequence[Mapping[str, Any]],
              *, judge: str = "", max_new_tokens: int = 0) -> dict:
  by_name: dict[str, list] = {d.name: [] for d in datasets}
  for r in predictions:
    by_name.setdefault(r["benchmark"], []).append(r)
  return {"judge": judge or None, "max_new_tokens": max_new_tokens,
          "benchmarks": [benchmark_summary(d, by_name[d.name]) for d in datasets]}


def _fmt(value, pattern: str = "{:.1f}") -> str:
  return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
      else pattern.format(value)


def _pct(value) -> str:
  return _fmt(None if value is None else 100 * value)


def markdown(report: Mapping[str, Any]) -> str:
  judge = report["judge"] or "none (rule only)"
  lines = ["# Benchmark evaluation", "",
           "Score: 100 × mean of the authors' per-item scores over the items scored (VerIPO's "
           "micro-average). Inconsistency: share of responses with reasoning and an answer whose "
           f"reasoning does not conclude the answer. Judge: {judge}.", "",
           "| benchmark | score | paper | scored / items | missing video | unreadable | mean "
           "length (tokens) | truncated % | rule inconsistency % | judge inconsistency % "
           "(judged, fallbacks) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for b in report["benchmarks"]:
    paper = ", ".join(f"{k} {v}" for k, v in b["paper"].items()) or "-"
    lines.append(
        f"| {b['benchmark']} | {_fmt(b['score'])} | {paper} | {b['scored']} / {b['items']} | "
        f"{b['missing_video']} | {b['unreadable']} | {_fmt(b['mean_length'])} | "
        f"{_pct(b['truncated_rate'])} | {_pct(b['rule_inconsistency'])} | "
        f"{_pct(b['judge_inconsistency'])} ({b['judged']}, {b['judge_fallbacks']}) |")
  for b in report["benchmarks"]:
    table = b.get("vsi_task_types")
    if not table:
      continue
    lines += ["", "## VSI-Bench by task type", "",
              f"Mean over the {table['n_types']} task types: {_fmt(table['type_mean'])} (the "
              "VSI-Bench paper's number; object_rel_direction averages its easy / medium / hard "
              f"parts). Micro-average: {_fmt(table['micro'])} (VerIPO's). Items of no known "
              f"type: {table['n_na']}.", "", "| task type | items | score |", "|---|---|---|"]
    lines += [f"| {k} | {v['n']} | {_fmt(v['score'])} |" for k, v in table["per_type"].items()]
  return "\n".join(lines) + "\n"


def plot(report: Mapping[str, Any], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = report["benchmarks"]
  names = [b["benchmark"] for b in rows]
  x = np.arange(len(names))
  nan = lambda v, k=1.0: np.nan if v is None else v * k
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  left.bar(x, [nan(b["score"]) for b in rows], color="tab:blue", label="this run")
  labelled = set()
  for i, b in enumerate(rows):
    for (model, value), style in zip(b["paper"].items(), ("k_", "r_")):
      left.plot(i, value, style, markersize=20,
                label=None if model in labelled else f"paper: {model}")
      labelled.add(model)
  left.set(xticks=x, xticklabels=names, ylabel="score (%)", title="Official score")
  left.legend(fontsize=8)
  width = 0.4
  right.bar(x - width / 2, [nan(b["rule_inconsistency"], 100) for b in rows], width,
            label="rule")
  right.bar(x + width / 2, [nan(b["judge_inconsistency"], 100) for b in rows], width,
            label=f"judge ({report['judge'] or 'none'})")
  right.set_ylim(bottom=0)
  right.set(xticks=x, xticklabels=names, ylabel="inconsistent responses (%)",
            title="Reasoning inconsistent with the answer")
  right.legend(fontsize=8)
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)


def write_eval_report(directory: str, report: Mapping[str, Any]) -> None:
  write_json_atomic(os.path.join(directory, REPORT_JSON), dict(report))
  write_text_atomic(os.path.join(directory, REPORT_MD), markdown(report))
  plot(report, os.path.join(directory, REPORT_PNG))
