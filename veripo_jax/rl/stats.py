"""An evaluation's numbers with standard errors that respect how it sampled.

An evaluation draws several responses per prompt, and responses to one prompt are correlated, so
a standard error that treats them as independent is too small. Every standard error here treats
the responses sharing a `prompt_id` as one cluster (the cluster-robust ratio estimator), which
also holds when prompts contribute different numbers of eligible responses to a rate.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Hashable, Mapping, Sequence

from veripo_jax.rl.answers import parse_response, rule_consistent
from veripo_jax.rl.verifier import INCONSISTENT, UNKNOWN


@dataclasses.dataclass(frozen=True)
class Estimate:
  mean: float     # NaN without observations
  se: float       # NaN with fewer than 2 clusters
  count: int      # observations


def cluster_mean(clusters: Sequence[Hashable], values: Sequence[float]) -> Estimate:
  """The mean of `values`, `clusters[i]` naming the cluster of value i, and its cluster-robust
  standard error: with per-cluster sums y_c and counts n_c, r = Σy / Σn and
  SE = sqrt(C/(C-1) · Σ_c (y_c − r·n_c)²) / Σn over the C clusters that have values."""
  sums: dict[Hashable, float] = collections.defaultdict(float)
  counts: dict[Hashable, int] = collections.defaultdict(int)
  for cluster, value in zip(clusters, values, strict=True):
    sums[cluster] += float(value)
    counts[cluster] += 1
  total, c = sum(counts.values()), len(counts)
  if not total:
    return Estimate(math.nan, math.nan, 0)
  r = sum(sums.values()) / total
  if c < 2:
    return Estimate(r, math.nan, total)
  spread = sum((sums[k] - r * counts[k]) ** 2 for k in counts)
  return Estimate(r, math.sqrt(c / (c - 1) * spread) / total, total)


def _rule_readings(texts: Sequence[str]) -> list[tuple[bool, bool | None]]:
  """Per response: (has a non-empty think and answer, the rule's verdict on them or None)."""
  out = []
  for parsed in map(parse_response, texts):
    eligible = bool(parsed.think and parsed.answer)
    out.append((eligible, rule_consistent(parsed.think, parsed.answer) if eligible else None))
  return out


def _judge_estimate(clusters: Sequence[Hashable], verdicts: Sequence[Mapping]
                    ) -> tuple[Estimate, int]:
  """(share judged inconsistent among parseable verdicts, number of unparseable verdicts)."""
  for line in verdicts:
    if not 0 <= line["index"] < len(clusters):
      raise ValueError(f"judge verdict index {line['index']} outside the "
                       f"{len(clusters)} responses")
  known = [line for line in verdicts if line["verdict"] != UNKNOWN]
  estimate = cluster_mean([clusters[line["index"]] for line in known],
                          [line["verdict"] == INCONSISTENT for line in known])
  return estimate, len(verdicts) - len(known)


def evaluation_stats(responses: Sequence[Mapping], verdicts: Sequence[Mapping] | None) -> dict:
  """An evaluation's report numbers from its responses (`Rollouts.records()` lines) and an
  independent judge's verdicts on them (None: not judged, its numbers null).

  accuracy and length: over all responses. inconsistency_rule: over responses with a think and
  an answer, the share the rule does not read as consistent (no stated conclusion included, as
  `rule_inconsistency_rate`). conclusion_rate: over all responses, the share with a think and
  an answer whose reasoning states a conclusion the rule reads.
  """
  clusters = [r["prompt_id"] for r in responses]
  readings = _rule_readings([r["text"] for r in responses])
  eligible = [(c, verdict) for c, (ok, verdict) in zip(clusters, readings) if ok]
  estimates = {
      "accuracy": cluster_mean(clusters, [r["rewards"]["accuracy"] for r in responses]),
      "length": cluster_mean(clusters, [r["length"] for r in responses]),
      "inconsistency_rule": cluster_mean([c for c, _ in eligible],
                                         [v is not True for _, v in eligible]),
      "inconsistency_judge": Estimate(math.nan, math.nan, 0),
      "conclusion_rate": cluster_mean(clusters, [ok and v is not None for ok, v in readings]),
  }
  unknown = None
  if verdicts is not None:
    estimates["inconsistency_judge"], unknown = _judge_estimate(clusters, verdicts)
  out = {}
  for name, estimate in estimates.items():
    out["length_mean" if name == "length" else name] = estimate.mean
    out[f"{name}_se"] = estimate.se
  return {**out, "examples": len(responses), "judge_unknown": unknown}
