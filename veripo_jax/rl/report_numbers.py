"""Numbers of the run report as text: missing values as n/a, standard errors as ±."""

from __future__ import annotations

import math
from typing import Sequence

NA = "n/a"


def num(value) -> float:
  """A float; None and missing values are NaN."""
  return math.nan if value is None else float(value)


def fmt(value) -> str:
  """Counts as integers, other numbers to 4 significant digits, missing ones as n/a."""
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  value = num(value)
  return f"{value:.4g}" if math.isfinite(value) else NA


def se_key(key: str) -> str:
  """The name of a number's standard error in an evaluation entry (length_mean: length_se)."""
  return key.removesuffix("_mean") + "_se"


def pm(evaluation: dict, key: str) -> str:
  """An evaluation's number with its standard error: "0.25 ± 0.031" (n/a when missing)."""
  if not math.isfinite(num(evaluation[key])):
    return NA
  return f"{fmt(evaluation[key])} ± {fmt(evaluation[se_key(key)])}"


def mean(values: Sequence[float]) -> float:
  return sum(values) / len(values) if values else math.nan


def ratio(a: float, b: float) -> float:
  """a / b; NaN when either is missing or b is not positive."""
  return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan
