"""What a run's files say, stage by stage: the numbers of `report.json`.

Every number is read from the run's files (`metrics.jsonl`, and per stage `done.json`, an
evaluation's `responses.jsonl` and `judge_verdicts.jsonl`), so the summary can be rebuilt at any
time, also for a run that has not finished (a missing number is NaN, null in the file).
`rl.report` presents it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

from veripo_jax.fileio import read_jsonl
from veripo_jax.rl.artifacts import DONE_FILE, RESPONSES_FILE, VERDICTS_FILE, stage_dir
from veripo_jax.rl.claims import evaluate_claims
from veripo_jax.rl.report_numbers import mean, ratio
from veripo_jax.rl.stage_kinds import kind_of_metric, step_times, training_kinds
from veripo_jax.rl.stats import evaluation_stats
from veripo_jax.train.metrics import read_metrics


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


def stage_order_from_metrics(workdir: str) -> list[str]:
  """The stages in the order of their first metric record (the CLI's default)."""
  return list(dict.fromkeys(r["stage"] for r in read_metrics(workdir)))


def summarize(workdir: str, stages: list[StageData]) -> dict:
  """The report.json object; a missing number is NaN here and null in the file."""
  evaluations = [_evaluation(workdir, stages, s) for s in of_kind(stages, "eval")]
  return {"evaluations": evaluations,
          "verifier": [_verifier(s) for s in of_kind(stages, "verifier")],
          "independent_judge": _independent_judge(stages),
          "cost": [_cost_entry(s) for s in stages if s.kind in training_kinds()],
          "dpo_vs_grpo": _dpo_vs_grpo(stages),
          "claims": evaluate_claims(evaluations, {s.name: s.kind for s in stages}),
          "wall_s": _wall(stages)}


def load_stage(workdir: str, name: str, records: list[dict]) -> StageData:
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


def jsonable(value):
  """`value` with NaN and infinities as None (valid JSON: null), through dicts and lists."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  return value


def of_kind(stages: list[StageData], kind: str) -> list[StageData]:
  return [s for s in stages if s.kind == kind]


def _follows(stages: list[StageData], stage: StageData) -> str | None:
  """The training stage (sft, grpo, dpo) last before `stage`, by name; None if there is none."""
  trained = [s.name for s in stages[:stages.index(stage)] if s.kind in training_kinds()]
  return trained[-1] if trained else None


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
  done = [s for s in of_kind(stages, "judge_eval") if s.done is not None]
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
  grpo, dpo = of_kind(stages, "grpo"), of_kind(stages, "dpo")
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
