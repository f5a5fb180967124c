"""Rewards (reference/veripo_method.md §2): each rule on hand-computed values, and adversarial
model text that must score a float in [0, 1] quickly instead of raising or hanging."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from veripo_jax.rl.answers import parse_response
from veripo_jax.rl.rewards import (REWARDS, accuracy_reward, format_reward, get_reward,
                                   mean_relative_accuracy, normalize_problem_type,
                                   register_reward, rouge_scores, score_rollouts, total_reward,
                                   word_error_rate)


def R(answer: str, think: str = "I look at the video.") -> str:
  return f"<think>{think}</think>\n<answer>{answer}</answer>"


def acc(answer: str, gold: str, problem_type: str, **kw) -> float:
  return accuracy_reward(R(answer), gold, problem_type, **kw)


def in_thread(fn):
  out = []
  t = threading.Thread(target=lambda: out.append(fn()))
  t.start()
  t.join(10)
  assert out, "did not finish in a worker thread"
  return out[0]


# --- format ------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "<think>x</think><answer>B</answer>",
    "\n  <think>\nsteps\n</think>\n\n<answer> $B$ </answer>\n",
    "<think>x</think><answer>B</answer><|im_end|>",
    "<think>x</think><answer>B</answer>\n<|im_end|>\n<|endoftext|>",
    "<think>x</think><answer></answer>",  # empty answer: format ok, accuracy decides
])
def test_well_formed(text):
  assert parse_response(text).well_formed
  assert format_reward(text) == 0.5
  assert format_reward(text, value=1.0) == 1.0


@pytest.mark.parametrize("text", [
    "", "   ", "B", "<answer>B</answer>", "<think>x</think>",
    "<think><think>x</think></think><answer>B</answer>",
    "<think>x</think><answer><answer>B</answer></answer>",
    "<think>x</think><answer>A</answer><answer>B</answer>",
    "<think>x</think><think>y</think><answer>B</answer>",
    "<think>   \n </think><answer>B</answer>",
    "<think></think><answer>B</answer>",
    "Sure! <think>x</think><answer>B</answer>",
    "<think>x</think> so <answer>B</answer>",
    "<think>x</think><answer>B</answer> done",
    "<answer>B</answer><think>x</think>",
    "<think>x<answer>B</answer></think>",
    "<think>x</think><answer>B",
    "<THINK>x</THINK><ANSWER>B</ANSWER>",
    "<think>x</think><answer>B</answer><|im_end|> trailing",
])
def test_not_well_formed(text):
  assert not parse_response(text).well_formed
  assert format_reward(text) == 0.0


def test_parse_fields():
  p = parse_response("  <think> a \n</think><answer> B </answer>")
  assert (p.think, p.answer) == ("a", "B")
  # The last complete innermost pair is the answer, even when the format is broken.
  assert parse_response("<think>x</think><answer>A</answer><answer>B</answer>").answer == "B"
  nested = parse_response("<think><think>x</think></think><answer><answer>B</answer></answer>")
  assert (nested.think, nested.answer, nested.well_formed) == ("x", "B", False)
  assert parse_response("no tags").answer is None and parse_response("no tags").think is None
  assert parse_response(None) == parse_response("")  # not a string: scored like empty text


# --- multiple choice ---------------------------------------------------------------------------

@pytest.mark.parametrize("answer,expected", [
    ("$B$", 1.0), ("B", 1.0), ("b", 1.0), ("(B)", 1.0), (" B ", 1.0), ("$(B)$", 1.0),
    ("\\boxed{B}", 1.0), ("$\\text{B}$", 1.0), ("B.", 1.0), ("**B**", 1.0),
    ("B. back-right", 0.0),  # back-right holds a, c, g, h, i
    ("A or B", 0.0), ("The answer is B", 0.0), ("A", 0.0), ("$C$", 0.0), ("", 0.0),
    ("AB", 0.0), ("B, D", 0.0),
])
def test_multiple_choice_letter_rule(answer, expected):
  assert acc(answer, "B", "multiple choice") == expected
  assert acc(answer, "<answer>B</answer>", "multiple choice") == expected  # Video-R1 solution


def test_multiple_choice_options_and_exact_match():
  options = ["A. front-left", "B. back-right", "C. left"]
  assert acc("$B$", "B", "multiple choice", options=options) == 1.0
  # Option text in the answer is not accepted: eval scores it wrong, so training must too.
  assert acc("B. back-right", "B", "multiple choice", options=options) == 0.0
  # A gold given as option text (or "B. …") resolves to its letter.
  assert acc("$B$", "back-right", "multiple choice", options=options) == 1.0
  assert acc("$B$", "B. back-right", "multiple choice") == 1.0
  assert acc("$A$", "back-right", "multiple choice", options=options) == 0.0
  # Exact match (case/whitespace-folded) for golds that are not letters.
  assert acc("back-right", "back-right", "multiple choice") == 1.0
  assert acc("Yes", "yes", "multiple choice") == 1.0
  assert acc("no", "yes", "multiple choice") == 0.0


def test_no_answer_tag_scores_zero():
  assert accuracy_reward("B", "B", "multiple choice") == 0.0
  assert accuracy_reward("<think>x</think> B", "B", "multiple choice") == 0.0
  # Broken format, complete answer pair: accuracy still counts (format reward is separate).
  assert accuracy_reward("<answer>B</answer>", "B", "multiple choice") == 1.0


# --- numerical / math --------------------------------------------------------------------------

@pytest.mark.parametrize("answer,gold,expected", [
    ("3.5", "3.5", 1.0), ("$3.50$", "3.5", 1.0), ("\\boxed{3.5}", "3.5", 1.0), ("3.5.", "3.5", 1.0),
    ("1,234", "1234", 1.0), ("$1,234,567.5$", "1234567.5", 1.0), ("x = 5", "5", 1.0),
    ("3.5 meters", "3.5", 1.0), ("-2", "-2", 1.0), ("1e3", "1000", 1.0),
    ("3.5000001", "3.5", 1.0),  # relative error 2.9e-8 < 1e-6
    ("3.51", "3.5", 0.0), ("5 or 6", "5", 0.0), ("6", "5", 0.0), ("", "5", 0.0),
    ("B", "5", 0.0),
])
def test_numerical(answer, gold, expected):
  assert acc(answer, gold, "numerical") == expected


def test_numerical_tolerance_kwarg():
  assert acc("3.51", "3.5", "numerical", rtol=0.01) == 1.0
  assert acc("3.6", "3.5", "numerical", rtol=0.01) == 0.0


def test_math_verify_symbolic_in_main_thread_only():
  assert acc("\\frac{7}{2}", "3.5", "math") == 1.0
  assert acc("3.5", "$\\frac{7}{2}$", "math") == 1.0
  assert acc("2\\sqrt{2}", "\\sqrt{8}", "math") == 1.0
  assert acc("\\frac{1}{3}", "0.33", "math") == 0.0
  # Worker thread: no SIGALRM, so math-verify is skipped; plain numbers still compare.
  assert in_thread(lambda: acc("\\frac{7}{2}", "3.5", "math")) == 0.0
  assert in_thread(lambda: acc("$3.5$", "3.5", "numerical")) == 1.0


@pytest.mark.parametrize("answer,gold,expected", [
    ("1" + "0" * 900, "1" + "0" * 900, 1.0),  # beyond float range: Decimal comparison
    ("1" + "0" * 900, "1" + "0" * 899 + "1", 1.0),  # relative error 1e-900
    ("2" + "0" * 900, "1" + "0" * 900, 0.0),
    ("1e999999", "1", 0.0), ("1e999999", "1e999999", 1.0), ("-1e999999", "1e999999", 0.0),
    ("1e-999999", "0", 0.0),  # underflows to 0.0 as a float, is not 0
    ("1e" + "9" * 40, "1", 0.0),  # exponent beyond Decimal's range
    ("1" * 5000, "1" * 5000, 0.0),  # longer than max_chars
    ("inf", "1", 0.0), ("-inf", "1", 0.0), ("nan", "1", 0.0), ("Infinity", "1", 0.0),
    ("9" * 400 + "." + "9" * 400, "1e400", 1.0),  # rtol applies past float range too
])
def test_numerical_huge_and_special(answer, gold, expected):
  assert acc(answer, gold, "numerical") == expected


def test_sympy_bomb_is_bounded():
  for bomb in ("10^{10^{10}}", "9^{9^{9^{9}}}", "1000000!"):
    start = time.perf_counter()
    assert in_thread(lambda: acc(bomb, "1", "math")) == 0.0
    assert time.perf_counter() - start < 0.5
  start = time.perf_counter()  # main thread: math-verify's 1 s alarm stops sympy
  assert acc("10^{10^{10}}", "1", "math") == 0.0
  assert time.perf_counter() - start < 3


# --- regression (MRA) --------------------------------------------------------------------------

@pytest.mark.parametrize("pred,gold,expected", [
    # rel = |p - g| / |g|; θ ∈ {.50, .55, …, .95} passes iff rel ≤ 1 - θ
    (10, 10, 1.0),  # rel 0: all 10 thresholds
    (9, 10, 0.9),  # rel .10: θ ≤ .90 → .50….90 = 9 of 10
    (11, 10, 0.9),
    (1.1, 1.0, 0.9),  # rel 0.10000000000000009 in floats: still 9 of 10
    (10.6, 10, 0.9),  # rel .06: θ ≤ .94 → 9
    (10.4, 10, 1.0),  # rel .04: θ ≤ .96 → 10
    (7, 10, 0.5),  # rel .30: θ ≤ .70 → .50 .55 .60 .65 .70 = 5
    (13.3, 10, 0.4),  # rel .33: θ ≤ .67 → .50 .55 .60 .65 = 4
    (5, 10, 0.1),  # rel .50: only θ = .50
    (4, 10, 0.0), (20, 10, 0.0), (-10, 10, 0.0),
    (-9, -10, 0.9),
    (0, 0, 1.0), (0.1, 0, 0.0),
    (float("inf"), 10, 0.0), (float("nan"), 10, 0.0),
])
def test_mean_relative_accuracy(pred, gold, expected):
  assert mean_relative_accuracy(pred, gold) == pytest.approx(expected)


def test_regression_reward():
  assert acc("9", "10", "regression") == pytest.approx(0.9)
  assert acc("$9$ meters", "10", "regression") == pytest.approx(0.9)
  assert acc("3 to 4", "3.5", "regression") == 0.0  # two numbers: no single answer
  assert acc("about three", "3", "regression") == 0.0
  assert acc("1" * 5000, "1" * 5000, "regression") == 0.0
  assert acc("1e999999", "10", "regression") == 0.0
  assert accuracy_reward("no tags", "3", "regression") == 0.0
  with pytest.raises(ValueError, match="'two' is not a number"):
    accuracy_reward("no tags", "two", "regression")  # data error, raised even without an answer


# --- OCR (1 - WER) -----------------------------------------------------------------------------

def test_word_error_rate():
  assert word_error_rate("a b c d", "a b c d") == 0.0
  assert word_error_rate("a x c", "a b c d") == 0.5  # 1 substitution + 1 deletion over 4
  assert word_error_rate("a b c d e", "a b c d") == 0.25  # 1 insertion over 4
  assert word_error_rate("b c d a", "a b c d") == 0.5  # delete a, insert a
  assert word_error_rate("", "a b") == 1.0
  assert word_error_rate("", "") == 0.0 and word_error_rate("x", "") == 1.0


def test_ocr_reward():
  assert acc("STOP here", "STOP here", "OCR") == 1.0
  assert acc("a x c", "a b c d", "OCR") == 0.5
  assert acc("a b c d e", "a b c d", "ocr") == 0.75
  assert acc("A b c d", "a b c d", "OCR") == 0.75  # case-sensitive
  assert acc("x y z w v u", "a b c", "OCR") == 0.0  # WER 2 clipped
  assert acc("a b c " * 10**5, "a b c", "OCR") == 0.0  # longer than max_words


# --- free-form (ROUGE) -------------------------------------------------------------------------

def test_rouge_hand_computed():
  # pred: the cat sat on the mat / gold: the cat is on the mat (6 tokens each)
  # ROUGE-1 overlap 5 (the×2, cat, on, mat): F1 = 2·5/12; ROUGE-2 overlap 3 ((the cat), (on the),
  # (the mat)) of 5 bigrams each: F1 = 2·3/10; LCS "the cat on the mat" = 5: F1 = 2·5/12.
  r1, r2, rl = rouge_scores("the cat sat on the mat", "the cat is on the mat")
  assert (r1, r2, rl) == pytest.approx((10 / 12, 6 / 10, 10 / 12))
  assert acc("the cat sat on the mat", "the cat is on the mat", "free-form") == pytest.approx(
      (10 / 12 + 6 / 10 + 10 / 12) / 3)
  # LCS differs from bag overlap: "mat the" vs "the mat" → R1 1, R2 0, LCS 1 of 2 → 0.5.
  assert rouge_scores("mat the", "the mat") == pytest.approx((1.0, 0.0, 0.5))
  # Lowercase, punctuation dropped.
  assert acc("The Cat.", "the cat", "free-form") == 1.0
  # One word has no bigram: ROUGE-2 = 0 (as the rouge-score package) → 2/3.
  assert acc("cat", "cat", "free-form") == pytest.approx(2 / 3)
  assert acc("dog", "cat", "free-form") == 0.0
  assert acc("", "cat", "free-form") == 0.0


# --- problem types and robustness --------------------------------------------------------------

@pytest.mark.parametrize("spelling,kind", [
    ("multiple choice", "multiple choice"), ("Multiple Choice", "multiple choice"),
    ("multiple_choice", "multiple choice"), ("multiple-choice", "multiple choice"),
    ("numerical", "numerical"), ("Numeric", "numerical"), ("math", "math"),
    ("regression", "regression"), ("OCR", "ocr"), ("ocr", "ocr"), ("free-form", "free-form"),
    ("Free Form", "free-form"), ("free_form", "free-form"),
])
def test_problem_type_spellings(spelling, kind):
  assert normalize_problem_type(spelling) == kind


def test_unknown_problem_type_raises():
  with pytest.raises(ValueError, match="'essay'"):
    accuracy_reward(R("B"), "B", "essay")
  with pytest.raises(ValueError):
    accuracy_reward(R("B"), "B", None)


ADVERSARIAL = [
    "", "   ", None, b"\xff\xfe<answer>B</answer>", "\x00\x01\x7f\ud800\uffff",
    "<answer>", "</answer><answer>", "<answer>" * 10**4, "<think>" * 10**4 + "</think>" * 10**4,
    "<think>" + "a" * 10**5 + "</think><answer>B</answer>",
    "<think>x</think>" + "</think>" * 10**4 + "<answer>B</answer>",
    " " * 10**5 + "<|im_end|>", "<|im_end|>" * 10**4,
    "<answer>" + "\\boxed{" * 1000 + "5" + "}" * 1000 + "</answer>",
    "<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>",
    "<answer>ℬ 🙂 𝟗 ٣ ½ Ⅷ</answer>", "<answer>١٢٣</answer>", "<answer>\\frac{1}{0}</answer>",
    "<answer>" + "1" * 999 + "</answer>", "<answer>1e999999</answer>", "<answer>nan</answer>",
    "<answer>" + "word " * 3000 + "</answer>",
]


@pytest.mark.parametrize("response", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_any_response_scores_a_float(response):
  start = time.perf_counter()
  assert format_reward(response) in (0.0, 0.5)
  for gold, problem_type in (("B", "multiple choice"), ("3", "numerical"), ("3", "math"),
                             ("3", "regression"), ("a b", "OCR"), ("a b c", "free-form")):
    r = accuracy_reward(response, gold, problem_type, options=["A. x", "B. y"])
    assert isinstance(r, float) and 0.0 <= r <= 1.0
  assert time.perf_counter() - start < 1.0


# --- registry ----------------------------------------------------------------------------------

EXAMPLE = {"answer": "<answer>B</answer>", "problem_type": "multiple choice",
           "options": ["A. left", "B. right"]}


def test_registry_defaults_and_total():
  assert {"accuracy", "format"} <= set(REWARDS)
  assert get_reward("format")(R("B"), EXAMPLE) == 0.5
  assert total_reward(R("$B$"), EXAMPLE) == {"accuracy": 1.0, "format": 0.5, "total": 1.5}
  assert total_reward("<answer>B</answer>", EXAMPLE) == {"accuracy": 1.0, "format": 0.0,
                                                         "total": 1.0}
  out = total_reward(R("B"), EXAMPLE, weights={"format": 2.0})
  assert out == {"accuracy": 1.0, "format": 0.5, "total": 2.0}  # components stay unweighted
  assert total_reward(R("B"), EXAMPLE, weights=(0.5, 2.0))["total"] == 1.5  # aligned with names


def test_registry_errors():
  with pytest.raises(KeyError, match="known rewards: .*'accuracy'.*'format'"):
    get_reward("acuracy")
  with pytest.raises(KeyError, match="acuracy"):
    total_reward(R("B"), EXAMPLE, names=("acuracy",))
  with pytest.raises(KeyError, match="lenght"):
    total_reward(R("B"), EXAMPLE, weights={"lenght": 1.0})
  with pytest.raises(ValueError, match="1 reward weights for 2 rewards"):
    total_reward(R("B"), EXAMPLE, weights=(1.0,))
  with pytest.raises(ValueError):
    register_reward("format")(lambda r, e: 0.0)
  with pytest.raises(ValueError):
    register_reward("total")(lambda r, e: 0.0)


def test_custom_reward():
  @register_reward("test_brevity")
  def brevity(response, example):
    return 1.0 if len(response) < 100 else 0.0

  try:
    assert get_reward("test_brevity") is brevity
    out = total_reward(R("B"), EXAMPLE, names=("accuracy", "format", "test_brevity"),
                       weights={"test_brevity": -0.5})
    assert out == {"accuracy": 1.0, "format": 0.5, "test_brevity": 1.0, "total": 1.0}
  finally:
    del REWARDS["test_brevity"]


def test_score_rollouts():
  responses = [R("$B$"), R("A"), "B", ""]
  scores = score_rollouts(responses, [EXAMPLE] * 4)
  assert set(scores) == {"accuracy", "format", "total"}
  assert all(v.dtype == np.float32 and v.shape == (4,) for v in scores.values())
  np.testing.assert_array_equal(scores["accuracy"], [1, 0, 0, 0])
  np.testing.assert_array_equal(scores["format"], [0.5, 0.5, 0, 0])
  np.testing.assert_array_equal(scores["total"], [1.5, 0.5, 0, 0])
  assert score_rollouts([], [])["total"].shape == (0,)
  with pytest.raises(KeyError):
    score_rollouts([], [], names=("nope",))
  with pytest.raises(ValueError, match="2 responses for 1 examples"):
    score_rollouts(["a", "b"], [EXAMPLE])
