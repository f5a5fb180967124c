"""Rule-based rewards (reference/veripo_method.md §2): r = r_accuracy + r_format.

Scoring model text is an attack surface in RL: the policy finds every crash or hang path. So every
function here returns a float for ANY response (empty, garbage, megabytes, broken or nested tags);
only configuration/data mistakes raise: an unknown problem type or reward name, a regression gold
answer that is not a number.

Accuracy uses the content of the last complete `<answer>…</answer>` pair even when the format is
broken (the two rewards are independent, as in Video-R1/MM-EUREKA); no answer tag scores 0.

Numerical/math answers: a plain-number comparison first (relative tolerance, in Decimal so that
nothing overflows; decisive when both sides hold exactly one number), then `math-verify` (the
library the VerIPO authors use) for symbolic equivalence (`\\frac{7}{2}` = 3.5,
`2\\sqrt{2}` = `\\sqrt{8}`). math-verify bounds sympy with SIGALRM, which exists only in the
main thread; without it `10^{10^{10}}` never returns. So outside the main thread only the
plain-number comparison runs.
"""

from __future__ import annotations

import collections
import decimal
import functools
import math
import re
import threading
from decimal import Decimal
from typing import Any, Callable, Iterable, Mapping, Sequence

import math_verify
import numpy as np
from math_verify.errors import TimeoutException

from veripo_jax.rl.answers import (gold_letter, last_inner, normalize_space, parse_response,
                                   single_number, unwrap_answer)

_ANY_LETTER = re.compile(r"[A-Ja-j]")


def format_reward(response: str, *, value: float = 0.5) -> float:
  return value if parse_response(response).well_formed else 0.0


# --- accuracy ----------------------------------------------------------------------------------

_PROBLEM_TYPES = {
    "multiple choice": "multiple choice", "multiplechoice": "multiple choice",
    "mc": "multiple choice", "numerical": "numerical", "numeric": "numerical",
    "math": "math", "regression": "regression", "distance": "regression", "size": "regression",
    "count": "regression", "ocr": "ocr", "free form": "free-form", "freeform": "free-form"}


def normalize_problem_type(problem_type: str) -> str:
  """Canonical kind for Video-R1/VerIPO spellings (case, `_`/`-`/space-insensitive)."""
  key = problem_type if isinstance(problem_type, str) else ""
  key = re.sub(r"[\s_-]+", " ", key.strip().lower())
  if key not in _PROBLEM_TYPES:
    raise ValueError(f"unknown problem type {problem_type!r}; expected one of "
                     "'multiple choice', 'numerical', 'math', 'regression', 'OCR', 'free-form'")
  return _PROBLEM_TYPES[key]


def _multiple_choice(pred: str, gold: str, options: Sequence[str] | None,
                     max_chars: int) -> float:
  """Exact match (after `$`/`\\boxed{}` removal, case/whitespace-folded), else the eval-code
  letter rule: the ASCII letters a–j occurring ANYWHERE in the answer are exactly {gold letter}.

  So `$B$`, `(B)`, `b`, `**B**` pass; `B. back-right` (a, c, g, h, i), `A or B`, `The answer is
  B` (a, e, h) fail: the prompt asks for `$X$`, and anything longer is what eval scores wrong.
  Options only map a gold given as option text to its letter; an answer that repeats the option
  text is not accepted, even with the options known.
  """
  if len(pred) > max_chars:
    return 0.0
  text = unwrap_answer(pred)
  if text and normalize_space(text) == normalize_space(gold):
    return 1.0
  letter = gold_letter(gold, options)
  return float(letter is not None and {c.upper() for c in _ANY_LETTER.findall(text)} == {letter})


# Decimal arithmetic over the whole exponent range: values past float range still compare by rtol.
_DECIMAL = decimal.Context(prec=34, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN, traps=[])


def _numbers_equal(pred: Decimal, gold: Decimal, rtol: float) -> bool:
  with decimal.localcontext(_DECIMAL):
    return abs(pred - gold) <= Decimal(str(rtol)) * max(abs(pred), abs(gold))


@functools.lru_cache(maxsize=4096)
def _mv_parse(text: str, timeout_s: int) -> tuple:
  # `$…$` makes math-verify read bare LaTeX (`2\sqrt{2}`), not just the first plain number.
  return tuple(math_verify.parse(text if "$" in text else f"${text}$", parsing_timeout=timeout_s))


def _math_verify_equal(pred: str, gold: str, timeout_s: int) -> bool:
  try:
    g, p = _mv_parse(gold, timeout_s), _mv_parse(pred, timeout_s)
    return bool(g and p) and bool(math_verify.verify(list(g), list(p), timeout_seconds=timeout_s))
  except (Exception, TimeoutException):  # third-party sympy code: a failure is a wrong answer
    return False


def _numeric(pred: str, gold: str, rtol: float, max_chars: int, timeout_s: int) -> float:
  if len(pred) > max_chars:
    return 0.0
  p, g = single_number(pred), single_number(gold)
  if p is not None and g is not None:
    return float(_numbers_equal(p, g, rtol))
  if threading.current_thread() is not threading.main_thread():
    return 0.0
  return float(_math_verify_equal(pred, gold, timeout_s))


def mean_relative_accuracy(pred: float, gold: float) -> float:
  """VSI-Bench MRA: mean over θ ∈ {0.50, …, 0.95} of [|pred − gold| / |gold| ≤ 1 − θ].

  Thresholds are exact percentages (1 − 0.9 is 0.0999… in floats) with a 1e-9 rounding guard;
  gold 0 needs an exact 0.
  """
  if not (math.isfinite(pred) and math.isfinite(gold)):
    return 0.0
  if gold == 0:
    return float(pred == 0)
  rel = abs(pred - gold) / abs(gold)
  return sum(rel <= (100 - t) / 100 + 1e-9 for t in range(50, 100, 5)) / 10


def _regression(pred: str | None, gold: str, max_chars: int) -> float:
  g = single_number(gold)
  if g is None:
    raise ValueError(f"regression gold answer {gold!r} is not a number")
  p = single_number(pred) if pred is not None and len(pred) <= max_chars else None
  return 0.0 if p is None else mean_relative_accuracy(float(p), float(g))


def _edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
  return row[-1]


def _wer(pred: list[str], gold: list[str]) -> float:
  return float(bool(pred)) if not gold else _edit_distance(pred, gold) / len(gold)


def word_error_rate(pred: str, gold: str) -> float:
  """Word-level Levenshtein distance / gold word count (whitespace words, case-sensitive as OCR)."""
  return _wer(pred.split(), gold.split())


def _ocr(pred: str, gold: str, max_words: int) -> float:
  p, g = pred.split(), gold.split()
  # distance ≥ len(p) − len(g), so from 2·len(g) words on WER ≥ 1: skip the O(n·m) table.
  if len(p) > max_words or len(p) >= 2 * max(len(g), 1):
    return 0.0
  return max(1.0 - _wer(p, g), 0.0)


def _tokens(text: str) -> list[str]:
  # Lowercase words without punctuation, as the rouge-score package Video-R1 uses ("cat." = "cat").
  return re.findall(r"\w+", text.lower())


def _f1(overlap: int, n_pred: int, n_gold: int) -> float:
  return 0.0 if overlap == 0 else 2 * overlap / (n_pred + n_gold)


def _ngrams(tokens: list[str], n: int) -> collections.Counter:
  return collections.Counter(zip(*(tokens[i:] for i in range(n))))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  row = [0] * (len(b) + 1)
  for x in a:
    prev = 0
    for j, y in enumerate(b, 1):
      prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
  return row[-1]


def _rouge(p: list[str], g: list[str]) -> tuple[float, float, float]:
  scores = []
  for n in (1, 2):
    pn, gn = _ngrams(p, n), _ngrams(g, n)
    scores.append(_f1(sum((pn & gn).values()), sum(pn.values()), sum(gn.values())))
  scores.append(_f1(_lcs_length(p, g), len(p), len(g)))
  return tuple(scores)


def rouge_scores(pred: str, gold: str) -> tuple[float, float, float]:
  """ROUGE-1, ROUGE-2, ROUGE-L F1 (no stemming); no shared n-gram → 0, as in rouge-score."""
  return _rouge(_tokens(pred), _tokens(gold))


def _free_form(pred: str, gold: str, max_words: int) -> float:
  p = _tokens(pred)
  return 0.0 if len(p) > max_words else min(sum(_rouge(p, _tokens(gold))) / 3, 1.0)


def accuracy_reward(response: str, answer: str, problem_type: str, *,
                    options: Sequence[str] | None = None, rtol: float = 1e-6,
                    max_chars: int = 1000, max_words: int = 2048,
                    math_timeout_s: int = 1) -> float:
  """r_a ∈ [0, 1] of the response's answer against the gold `answer` (`B` or `<answer>B</answer>`).

  Multiple choice: exact match or the a–j letter rule (`_multiple_choice`); numerical/math:
  numbers within `rtol`, else math-verify; regression: MRA; OCR: 1 − WER; free-form: mean of
  ROUGE-1/2/L F1; all clipped to [0, 1].

  `max_chars` caps multiple-choice/numeric/regression answers and `max_words` OCR/free-form
  answers: longer is a runaway answer, scored 0 without parsing. `math_timeout_s` (whole
  seconds: SIGALRM) bounds each math-verify parse and comparison.
  """
  kind = normalize_problem_type(problem_type)
  gold = str(answer).strip()
  if "<answer>" in gold:  # Video-R1 `solution` field
    gold = last_inner(gold, "answer") or ""
  pred = parse_response(response).answer
  if kind == "regression":  # the gold is checked even when there is no answer: a data error
    return _regression(pred, gold, max_chars)
  if pred is None:
    return 0.0
  if kind == "multiple choice":
    return _multiple_choice(pred, gold, options, max_chars)
  if kind in ("numerical", "math"):
    return _numeric(pred, gold, rtol, max_chars, math_timeout_s)
  if kind == "ocr":
    return _ocr(pred, gold, max_words)
  return _free_form(pred, gold, max_words)


# --- registry ----------------------------------------------------------------------------------

RewardFn = Callable[[str, Mapping[str, Any]], float]
REWARDS: dict[str, RewardFn] = {}
DEFAULT_REWARDS = ("accuracy", "format")


def register_reward(name: str) -> Callable[[RewardFn], RewardFn]:
  """Decorator: `fn(response, example) -> float` under `name` ("total" is the sum's key)."""
  def decorator(fn: RewardFn) -> RewardFn:
    if name == "total" or name in REWARDS:
      raise ValueError(f"reward name {name!r} is reserved or already registered")
    REWARDS[name] = fn
    return fn
  return decorator


def get_reward(name: str) -> RewardFn:
  if name not in REWARDS:
    raise KeyError(f"unknown reward {name!r}; known rewards: {sorted(REWARDS)}")
  return REWARDS[name]


@register_reward("accuracy")
def _accuracy(response: str, example: Mapping[str, Any]) -> float:
  return accuracy_reward(response, example["answer"], example["problem_type"],
                         options=example.get("options"))


@register_reward("format")
def _format(response: str, example: Mapping[str, Any]) -> float:
  return format_reward(response)


Weights = Mapping[str, float] | Sequence[float] | None


def _resolve(names: Iterable[str], weights: Weights):
  """(name, fn) pairs and a weight per name: weights map names (missing → 1) or align with names."""
  names = tuple(names)
  fns = [(name, get_reward(name)) for name in names]
  if weights is None:
    weights = {}
  elif not isinstance(weights, Mapping):
    if len(weights) != len(names):
      raise ValueError(f"{len(weights)} reward weights for {len(names)} rewards {list(names)}")
    weights = dict(zip(names, weights))
  extra = set(weights) - set(names)
  if extra:
    raise KeyError(f"weights for rewards not in names {list(names)}: {sorted(extra)}")
  return fns, {name: float(weights.get(name, 1.0)) for name in names}


def total_reward(response: str, example: Mapping[str, Any],
                 names: Iterable[str] = DEFAULT_REWARDS,
                 weights: Weights = None) -> dict[str, float]:
  """Each named component (unweighted) and "total" = Σ weight·component (weights default 1)."""
  fns, w = _resolve(names, weights)
  out = {name: float(fn(response, example)) for name, fn in fns}
  out["total"] = sum(w[name] * out[name] for name, _ in fns)
  return out


def score_rollouts(responses: Sequence[str], examples: Sequence[Mapping[str, Any]],
                   names: Iterable[str] = DEFAULT_REWARDS,
                   weights: Weights = None) -> dict[str, np.ndarray]:
  """`total_reward` over a batch: float32 arrays [len(responses)] per component and "total"."""
  if len(responses) != len(examples):
    raise ValueError(f"{len(responses)} responses for {len(examples)} examples")
  names = tuple(names)
  _resolve(names, weights)  # a config error raises even for an empty batch
  rows = [total_reward(r, e, names, weights) for r, e in zip(responses, examples)]
  return {key: np.asarray([row[key] for row in rows], np.float32) for key in (*names, "total")}
