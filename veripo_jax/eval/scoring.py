"""The benchmark scoring rules, exactly as the VerIPO authors' `evaluation/calculate_score.py`
applies them (and, named as such, Video-R1's `src/eval_bench.py` rule), plus VSI-Bench's task
types derived from the question wording.

VerIPO's rule, per item with `gt = str(answer)` (docs: shared/reference/veripo_eval_protocol.md):

* multiple choice when `gt.isalpha() and gt.isupper()`: `ans` = the FIRST `<answer>(.*?)</answer>`
  (dot matches newline; "" if none), stripped, the tag strings removed, stripped again. Correct iff
  `gt.lower()` occurs in `ans.lower()` and no other letter of a..j occurs anywhere in it: `$B$`
  passes, `B. back-right`, `\\boxed{B}`, `Option B` fail.
* VSI-Bench numeric items: `ans` (empty → 0) with the tags removed, stripped, `$` stripped from
  both ends, cut at the first SPACE (`split(' ')[0]`, not any whitespace), trailing dots and then
  whitespace stripped, `float()`ed (failure → 0; so does a gold of 0, a ZeroDivisionError there).
  MRA = mean over the ten thresholds of `abs(pred - gt) / gt <= 1 - theta`, the thresholds being
  `np.linspace(.5, .95, 10)`: `theta_i = i * ((0.95 - 0.5) / 9) + 0.5` for i < 9 and 0.95 for i = 9
  (float64). Because `1 - theta` is then 0.19999999999999996 at theta 0.8 and
  0.44999999999999996 at theta 0.55, a relative error of exactly 0.2 (4 vs 5, 12 vs 10) or 0.45
  (11 vs 20) scores 0.1 less than exact arithmetic gives; and because theta_7 is 0.85 (not
  0.8500000000000001 as 0.5 + 7 * 0.05 is), 23 vs 20 (error 0.15) gets the 0.85 point.
* other numeric items: math-verify on the WHOLE output,
  `verify(parse(output, [String, Latex, Expr extraction]), parse("$" + gt + "$"))` (argument
  order as theirs: the response first).
* benchmark score: 100 × the mean over all items (a micro-average).

The benchmark is VSI-Bench when its name contains "vsi_bench" (theirs tests the predictions'
file path for that substring); every other name gets the generic rules.
"""

from __future__ import annotations

import re
import threading
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "CHOICE_LETTERS", "MRA_THRESHOLDS", "VSI_TASK_TYPES", "VSI_FINE_TASK_TYPES",
    "answer_tag", "is_multiple_choice", "multiple_choice_score", "vsi_parse_number",
    "mean_relative_accuracy", "vsi_numeric_score", "math_verify_score", "official_score",
    "benchmark_score",
    "vsi_task_type", "vsi_task_table", "video_r1_extract_answer", "video_r1_mra",
    "video_r1_score", "video_r1_summary",
]

CHOICE_LETTERS = "abcdefghij"

# np.linspace(0.5, 0.95, int((0.95 - 0.5) / 0.05 + 2)) == np.linspace(0.5, 0.95, 10), element by
# element: numpy computes `arange(10) * ((stop - start) / 9) + start` and then sets the last
# element to `stop`. Plain floats, so no numpy in the comparison.
_MRA_STEP = (0.95 - 0.5) / 9
MRA_THRESHOLDS: tuple[float, ...] = tuple(i * _MRA_STEP + 0.5 for i in range(9)) + (0.95,)
_MRA_TOLERANCES: tuple[float, ...] = tuple(1 - theta for theta in MRA_THRESHOLDS)

_OPEN, _CLOSE = "<answer>", "</answer>"

# --- VerIPO's rule -----------------------------------------------------------------------------


def answer_tag(response: str) -> str | None:
  """Group 1 of `re.search(r'<answer>(.*?)</answer>', response, re.DOTALL)`, unstripped, or None.

  The same match, found with two `str.find`s (linear time on any text): the regex's leftmost
  match starts at the first `<answer>` whenever any `</answer>` follows it, and no later
  `<answer>` can have one after it otherwise.
  """
  start = response.find(_OPEN)
  if start < 0:
    return None
  start += len(_OPEN)
  end = response.find(_CLOSE, start)
  if end < 0:
    return None
  return response[start:end]


def _their_answer(response: str) -> str:
  """Their `student_answer` before the per-rule cleaning: the tag's content stripped, "" if none."""
  inner = answer_tag(response)
  return "" if inner is None else inner.strip()


def _remove_tags(text: str) -> str:
  return text.replace(_CLOSE, "").replace(_OPEN, "").strip()


def is_multiple_choice(gold: Any) -> bool:
  gt = str(gold)
  return gt.isalpha() and gt.isupper()


def multiple_choice_score(response: str, gold: Any) -> float:
  gt = str(gold).lower()
  ans = _remove_tags(_their_answer(response)).lower()
  if gt not in ans:
    return 0.0
  return 0.0 if any(c in ans for c in CHOICE_LETTERS if c != gt) else 1.0


def _to_float(text: str) -> float | None:
  try:
    return float(text)
  except Exception:  # their `to_float` catches everything
    return None


def vsi_parse_number(response: str) -> float | None:
  """The number their VSI-Bench rule reads from a response, or None (which scores 0)."""
  ans = _their_answer(response)
  if ans == "":
    return None
  ans = _remove_tags(ans).strip("$")
  return _to_float(ans.split(" ")[0].rstrip(".").strip())


def mean_relative_accuracy(pred: float | None, gt: float | None) -> float:
  """Their MRA (`<=` against the linspace tolerances); 0 where theirs raises (None, gt == 0)."""
  if pred is None or gt is None:
    return 0.0
  try:
    err = abs(pred - gt) / gt
  except ZeroDivisionError:
    return 0.0
  return sum(err <= tol for tol in _MRA_TOLERANCES) / len(_MRA_TOLERANCES)


def vsi_numeric_score(response: str, gold: Any) -> float:
  return mean_relative_accuracy(vsi_parse_number(response),
                                _to_float(str(gold).strip("$").strip()))


def math_verify_score(response: str, gold: Any) -> float:
  """math-verify on the whole output, as theirs (including their one hard-coded gold fix).

  math-verify's default 5 s timeouts use SIGALRM, which only the main thread may set; in any
  other thread the same calls run without a timeout (same answers, no guard against a hang).
  """
  from math_verify import (ExprExtractionConfig, LatexExtractionConfig, StringExtractionConfig,
                           parse, verify)
  gt = str(gold)
  if gt in ("['24/7', '3.429', '3.43]", "['24/7', '3.429', '3.43']"):
    gt = "24/7"
  in_main = threading.current_thread() is threading.main_thread()
  parse_kw = {} if in_main else {"parsing_timeout": None}
  verify_kw = {} if in_main else {"timeout_seconds": None}
  gold_parsed = parse(f"${gt}$", **parse_kw)
  answer_parsed = parse(response, extraction_config=[
      StringExtractionConfig(), LatexExtractionConfig(), ExprExtractionConfig()], **parse_kw)
  return float(verify(answer_parsed, gold_parsed, **verify_kw))


def official_score(response: str, gold: Any, benchmark: str) -> float:
  """One item's score under the VerIPO authors' rules: 0/1 for multiple choice, MRA in [0, 1]
  for VSI-Bench numbers, 0/1 from math-verify for other numbers."""
  if is_multiple_choice(gold):
    return multiple_choice_score(response, gold)
  if "vsi_bench" in benchmark:
    return vsi_numeric_score(response, gold)
  return math_verify_score(response, gold)


def benchmark_score(scores: Iterable[float]) -> float:
  """100 × the mean of the items' scores (their micro-average, summed in order as theirs)."""
  total, n = 0.0, 0
  for s in scores:
    total += s
    n += 1
  if n == 0:
    raise ValueError("benchmark_score of no items")
  return total / n * 100


# --- VSI-Bench task types ----------------------------------------------------------------------

VSI_TASK_TYPES = (
    "obj_appearance_order", "object_rel_direction", "object_rel_distance", "route_planning",
    "object_abs_distance", "object_counting", "object_size_estimation", "room_size_estimation")
VSI_FINE_TASK_TYPES = (
    "obj_appearance_order", "object_rel_direction_easy", "object_rel_direction_medium",
    "object_rel_direction_hard", "object_rel_distance", "route_planning", "object_abs_distance",
    "object_counting", "object_size_estimation", "room_size_estimation")

# VSI-Bench's question templates (as in the shipped vsi_bench.json), each matched against the
# WHOLE question; "(.+)" holds an object name or list. A question must match exactly one.
_S = r"\s*"  # between a template's sentences
_STANDING = r"If I am standing by the (.+) and facing the (.+), is the (.+) to "
_VSI_TEMPLATES = tuple((name, re.compile(pattern, re.DOTALL)) for name, pattern in (
    ("object_counting", r"How many (.+)\(s\) are in this room\?"),
    ("object_abs_distance", r"Measuring from the closest point of each object, what is the "
     r"distance between the (.+) and the (.+) \(in meters\)\?"),
    ("object_rel_distance", r"Measuring from the closest point of each object, which of these "
     r"objects \((.+)\) is the closest to the (.+)\?"),
    ("object_size_estimation", r"What is the length of the longest dimension \(length, width, "
     r"or height\) of the (.+), measured in centimeters\?"),
    ("room_size_estimation", r"What is the size of this room \(in square meters\)\?" + _S +
     r"If multiple rooms are shown, estimate the size of the combined space\."),
    ("obj_appearance_order", r"What will be the first-time appearance order of the following "
     r"categories in the video: (.+)\?"),
    ("object_rel_direction_easy", _STANDING + r"the left or the right of the (.+)\?"),
    ("object_rel_direction_medium", _STANDING + r"my left, right, or back\?" + _S +
     r"An object is to my back if I would have to turn at least 135 degrees in order to face "
     r"it\."),
    ("object_rel_direction_hard", _STANDING + r"my front-left, front-right, back-left, or "
     r"back-right\?" + _S + r"The directions refer to the quadrants of a Cartesian plane \(if I "
     r"am standing at the origin and facing along the positive y-axis\)\."),
    ("route_planning", r"You are a robot beginning (.+)\. You want to navigate to (.+)\. "
     r"You will perform the following actions \(Note: for each \[please fill in\], choose either "
     r"'turn back,' 'turn left,' or 'turn right\.'\): (.+) You have reached the final "
     r"destination\."),
))
# What `processed_question` appends to a multiple-choice `question`: option lines and the
# instruction; removed (from the end only) so either field can be passed.
_OPTIONS_TAIL = re.compile(
    r"(?:\n[A-J]\.[^\n]*)+(?:\nAnswer with the option's letter from the given choices "
    r"directly\.)?\s*\Z")


def _coarse(fine: str) -> str:
  return "object_rel_direction" if fine.startswith("object_rel_direction") else fine


def vsi_task_type(question: str, fine_grained: bool = False) -> str:
  """The VSI-Bench task type the question's wording determines, or "n/a" when it matches no
  template or more than one (never a guess). `fine_grained` keeps object_rel_direction's
  easy/medium/hard apart. Takes `question` or `processed_question`."""
  text = _OPTIONS_TAIL.sub("", question.strip()).strip()
  found = [name for name, template in _VSI_TEMPLATES if template.fullmatch(text)]
  if len(found) != 1:
    return "n/a"
  return found[0] if fine_grained else _coarse(found[0])


def _item_fine_type(item: Any) -> str:
  """An item's fine-grained type: its own `question_type` field (e.g. joined from the VSI-Bench
  release) when it has one, else the one its `question` wording determines."""
  if isinstance(item, Mapping):
    given = item.get("question_type")
    if given:
      given = str(given)
      return given if given in VSI_FINE_TASK_TYPES or given in VSI_TASK_TYPES else "n/a"
    item = item.get("question", "")
  return vsi_task_type(str(item), fine_grained=True)


def _mean100(values: Sequence[float]) -> float:
  return sum(values) / len(values) * 100


def vsi_task_table(items_with_scores: Iterable[tuple[Any, float]]) -> dict[str, Any]:
  """The VSI-Bench paper's (and lmms-eval's) per-task-type table from (item, score) pairs, where
  an item is a question string or a dict with `question` (and optionally `question_type`).

  Returns a dict:
    per_type: {type: {"n", "score"}} over the eight types present, score = 100 × mean;
      object_rel_direction's score is the mean of its easy/medium/hard sub-type means (as
      lmms-eval merges them), over the sub-types present;
    per_fine_type: {fine type: {"n", "score"}} for the fine-grained types present;
    type_mean: mean of per_type scores (the VSI-Bench paper's number); None if no typed item;
    n_types: how many types entered type_mean;
    n_na / na_score: items whose type is "n/a" (left out of the type table) and their 100 × mean;
    n / micro: all items and 100 × their mean (VerIPO's number; "n/a" items included).
  """
  fine: dict[str, list[float]] = {}
  na: list[float] = []
  every: list[float] = []
  for item, score in items_with_scores:
    kind = _item_fine_type(item)
    every.append(score)
    (na if kind == "n/a" else fine.setdefault(kind, [])).append(score)
  per_fine = {k: {"n": len(fine[k]), "score": _mean100(fine[k])}
              for k in VSI_FINE_TASK_TYPES + ("object_rel_direction",) if k in fine}
  per_type: dict[str, dict[str, Any]] = {}
  for kind in VSI_TASK_TYPES:
    parts = [k for k in per_fine if _coarse(k) == kind]
    if parts:
      per_type[kind] = {"n": sum(per_fine[k]["n"] for k in parts),
                        "score": sum(per_fine[k]["score"] for k in parts) / len(parts)}
  scores = [v["score"] for v in per_type.values()]
  return {
      "per_type": per_type,
      "per_fine_type": {k: v for k, v in per_fine.items() if k != "object_rel_direction"},
      "type_mean": sum(scores) / len(scores) if scores else None,
      "n_types": len(scores),
      "n_na": len(na),
      "na_score": _mean100(na) if na else None,
      "n": len(every),
      "micro": _mean100(every) if every else None,
  }


# --- Video-R1's rule (src/eval_bench.py, reward_fn), for Video-R1-format eval files ------------

_VR1_ANSWER = re.compile(r"<answer>\s*(.*?)\s*</answer>", re.DOTALL)
# torch.arange(0.5, 0.95 + 0.05 / 2, 0.05, dtype=float32) on CPU: 0.5 + 0.05 * i in float64,
# rounded to float32; the comparison `rel_error < 1 - thresholds` runs in float32.
_VR1_TOLERANCES = np.float32(1) - np.array([0.5 + 0.05 * i for i in range(10)], np.float32)


def video_r1_extract_answer(text: str) -> str:
  """Video-R1's `extract_answer`: the first `<answer>\\s*(.*?)\\s*</answer>`, stripped; ""."""
  m = _VR1_ANSWER.search(text)
  return m.group(1).strip() if m else ""


def _vr1_number(text: str) -> float | None:
  try:
    return float(text.replace(",", ""))
  except Exception:
    return None


def video_r1_mra(pred: float, gt: float) -> float:
  """Video-R1's MRA: float32 throughout, `|pred - gt| / (|gt| + 1e-8) < 1 - theta` (STRICT),
  the mean returned as torch's float32 `.item()` (e.g. 0.699999988079071 for 7 of 10)."""
  with np.errstate(all="ignore"):
    p, g = np.float32(pred), np.float32(gt)
    err = np.abs(p - g) / (np.abs(g) + np.float32(1e-8))
    hits = np.count_nonzero(err < _VR1_TOLERANCES)
    return float(np.float32(hits) / np.float32(len(_VR1_TOLERANCES)))


def video_r1_score(response: str, gold: Any, problem_type: str) -> float:
  """Video-R1's per-item reward in its evaluation (src/eval_bench.py `reward_fn`).

  `gold` is the item's Video-R1 `solution` ("<answer>B</answer>"); a gold without an answer tag
  is taken as the bare answer (as if wrapped in the tags). The response's answer is the first
  `<answer>` tag's content, stripped, or the WHOLE response when that is empty.
    "multiple choice": exact string match (stripped);
    "numerical": 0 unless both or neither of the two contain "." or ","; then equal after
      removing "," and round(x, 2);
    "regression": `video_r1_mra` (strict <, float32);
    anything else ("OCR", "free-form", ...): 0.0, as their evaluation script scores it.
  """
  try:
    out = video_r1_extract_answer(response)
    if out == "":
      out = response
    gold = str(gold)
    gt = video_r1_extract_answer(gold) if _VR1_ANSWER.search(gold) else gold.strip()
    if problem_type == "multiple choice":
      return 1.0 if out.strip() == gt.strip() else 0.0
    if problem_type == "numerical":
      if (("." in gt) or ("," in gt)) != (("." in out) or ("," in out)):
        return 0.0
      g, p = _vr1_number(gt), _vr1_number(out)
      if g is None or p is None:
        return 0.0
      return 1.0 if round(g, 2) == round(p, 2) else 0.0
    if problem_type == "regression":
      g, p = _vr1_number(gt), _vr1_number(out)
      if g is None or p is None:
        return 0.0
      return video_r1_mra(p, g)
    return 0.0
  except Exception:  # theirs scores any exception 0
    return 0.0


def video_r1_summary(scores: Sequence[float], problem_types: Sequence[str]) -> dict[str, Any]:
  """Video-R1's two reported means, ×100: `mean_acc` over the non-"regression" items and
  `mean_mra` over the "regression" ones (None where there are none; theirs reports 0.0 for an
  absent mean_mra and computes in float32, here float64)."""
  if len(scores) != len(problem_types):
    raise ValueError("one problem_type per score")
  acc = [s for s, t in zip(scores, problem_types) if t != "regression"]
  mra = [s for s, t in zip(scores, problem_types) if t == "regression"]
  return {"mean_acc": _mean100(acc) if acc else None, "n_acc": len(acc),
          "mean_mra": _mean100(mra) if mra else None, "n_mra": len(mra)}
