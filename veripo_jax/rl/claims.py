"""The paper's Figure-1 claims, checked on a run's evaluations (the issue's reading of it)."""

from __future__ import annotations

import math

from veripo_jax.rl.report_numbers import fmt, num, pm, ratio, se_key

# The claims' thresholds (the issue's reading of the paper's Figure 1).
MIN_CONCLUSION_RATE = 0.70
MIN_GRPO_GAIN = 0.10
MIN_DPO_DROP_SE = 3.0
CLAIMS = {
    1: "The SFT warm start states a conclusion the rule reads in at least "
       f"{MIN_CONCLUSION_RATE:.0%} of its responses.",
    2: f"GRPO raises held-out accuracy by at least {MIN_GRPO_GAIN:.2f} over the warm start.",
    3: f"DPO lowers the rule-measured inconsistency rate by at least {MIN_DPO_DROP_SE:g} standard "
       "errors, lengthens responses, and loses no more than one standard error of accuracy.",
    4: "The second GRPO stage keeps accuracy within one standard error of the best evaluation "
       "after the warm start.",
}

MILESTONES = {"warm": "warm-start", "grpo1": "first-GRPO", "dpo": "DPO", "grpo2": "second-GRPO"}
_TOLERANCE = 1e-9   # float rounding: a gain of 0.35 - 0.25 meets a 0.10 threshold


def milestones(evaluations: list[dict], kinds: dict[str, str]) -> dict[str, dict | None]:
  """The evaluations the claims compare (None: absent): warm, the first; grpo1, the first that
  follows a GRPO stage; dpo, the first after grpo1 that follows a DPO stage; grpo2, the first
  after that one that follows a GRPO stage."""
  def first(start: int | None, kind: str) -> int | None:
    if start is None:
      return None
    return next((i for i in range(start, len(evaluations))
                 if kinds.get(evaluations[i]["follows"]) == kind), None)

  grpo1 = first(0, "grpo")
  dpo = first(None if grpo1 is None else grpo1 + 1, "dpo")
  grpo2 = first(None if dpo is None else dpo + 1, "grpo")
  index = {"warm": 0 if evaluations else None, "grpo1": grpo1, "dpo": dpo, "grpo2": grpo2}
  return {name: None if i is None else evaluations[i] for name, i in index.items()}


def _at_least(a: float, b: float) -> bool:
  return a >= b - _TOLERANCE


def _decided(condition: bool, *numbers: float) -> bool | None:
  """`condition`, or None when a number it compares is missing (NaN)."""
  return condition if all(math.isfinite(num(x)) for x in numbers) else None


def _claim_warm_start(warm: dict) -> tuple[bool | None, str]:
  rate = num(warm["conclusion_rate"])
  return (_decided(_at_least(rate, MIN_CONCLUSION_RATE), rate),
          f"{warm['stage']}: conclusion rate {pm(warm, 'conclusion_rate')} "
          f"(needs ≥ {MIN_CONCLUSION_RATE:.2f}).")


def _claim_grpo_gain(warm: dict, grpo1: dict) -> tuple[bool | None, str]:
  gain = num(grpo1["accuracy"]) - num(warm["accuracy"])
  return (_decided(_at_least(gain, MIN_GRPO_GAIN), gain),
          f"accuracy {pm(warm, 'accuracy')} ({warm['stage']}) → {pm(grpo1, 'accuracy')} "
          f"({grpo1['stage']}): gain {fmt(gain)} (needs ≥ {MIN_GRPO_GAIN:.2f}).")


def _difference(a: dict, b: dict, key: str) -> tuple[float, float]:
  """(a − b, the standard error of the difference of two independent evaluations)."""
  return (num(a[key]) - num(b[key]),
          math.hypot(num(a[se_key(key)]), num(b[se_key(key)])))


def _claim_dpo(grpo1: dict, dpo: dict) -> tuple[bool | None, str]:
  drop, drop_se = _difference(grpo1, dpo, "inconsistency_rule")
  loss, loss_se = _difference(grpo1, dpo, "accuracy")
  judge_drop, judge_se = _difference(grpo1, dpo, "inconsistency_judge")
  longer = num(dpo["length_mean"]) > num(grpo1["length_mean"])
  held = _decided(_at_least(drop, MIN_DPO_DROP_SE * drop_se) and longer
                  and _at_least(loss_se, loss),
                  drop, drop_se, loss, loss_se, dpo["length_mean"], grpo1["length_mean"])
  return held, (
      f"{grpo1['stage']} → {dpo['stage']}: rule inconsistency "
      f"{pm(grpo1, 'inconsistency_rule')} → {pm(dpo, 'inconsistency_rule')} (drop "
      f"{fmt(drop)} = {fmt(ratio(drop, drop_se))} SE, needs ≥ {MIN_DPO_DROP_SE:g}); length "
      f"{pm(grpo1, 'length_mean')} → {pm(dpo, 'length_mean')} tokens; accuracy "
      f"{pm(grpo1, 'accuracy')} → {pm(dpo, 'accuracy')} (loss {fmt(loss)}, allowed ≤ "
      f"{fmt(loss_se)}); judge inconsistency {pm(grpo1, 'inconsistency_judge')} → "
      f"{pm(dpo, 'inconsistency_judge')} (drop {fmt(judge_drop)} ± {fmt(judge_se)}, "
      "not tested).")


def _claim_grpo_keeps(grpo1: dict, dpo: dict, grpo2: dict) -> tuple[bool | None, str]:
  measured = [e for e in (grpo1, dpo, grpo2) if math.isfinite(num(e["accuracy"]))]
  best = max(measured, key=lambda e: e["accuracy"]) if measured else grpo2
  gap, allowed = _difference(best, grpo2, "accuracy")
  return (_decided(_at_least(allowed, gap), gap, allowed),
          f"best after the warm start {pm(best, 'accuracy')} ({best['stage']}), "
          f"{grpo2['stage']} {pm(grpo2, 'accuracy')}: gap {fmt(gap)} (allowed ≤ "
          f"{fmt(allowed)}).")


# Per claim: the milestones it compares, and its check.
_CLAIM_CHECKS = {1: (("warm",), _claim_warm_start),
                 2: (("warm", "grpo1"), _claim_grpo_gain),
                 3: (("grpo1", "dpo"), _claim_dpo),
                 4: (("grpo1", "dpo", "grpo2"), _claim_grpo_keeps)}


def evaluate_claims(evaluations: list[dict], kinds: dict[str, str]) -> list[dict]:
  """The four claims checked on the evaluations (in stage order; `kinds`: stage name → kind);
  `held` is None when an evaluation a claim needs is absent or lacks a number."""
  found = milestones(evaluations, kinds)
  claims = []
  for number, (needs, check) in _CLAIM_CHECKS.items():
    absent = [MILESTONES[name] for name in needs if found[name] is None]
    if absent:
      held, evidence = None, f"Not measured: no {' or '.join(absent)} evaluation."
    else:
      held, evidence = check(*(found[name] for name in needs))
    claims.append({"claim": number, "text": CLAIMS[number], "held": held,
                   "evidence": evidence})
  return claims
