"""The independent consistency grade: which responses the judge is asked about, how its replies
become verdict lines, and the config checks."""

import json

import pytest

from veripo_jax.rl.judge_eval import JudgeEvalConfig, grade, read_responses
from veripo_jax.rl.verifier_stage import JudgeConfig


class EchoJudge:
  """Replies Yes when the reasoning ends with the answer, No otherwise, garbage for answer "?";
  records what it was asked."""

  def __init__(self):
    self.asked = []

  def verdicts(self, items):
    self.asked.extend(items)
    return ["maybe" if a == "?" else ("Yes" if r.endswith(a + ".") else "No") for r, a in items]


def _response(think, answer):
  parts = [f"<think>{think}</think>" if think is not None else "",
           f"<answer>{answer}</answer>" if answer is not None else ""]
  return {"prompt_id": "p", "text": "".join(parts)}


def test_grade_asks_only_about_responses_with_think_and_answer():
  responses = [_response("So the answer is B.", "B"), _response("So the answer is B.", None),
               _response("So the answer is 3.", "4"), _response(None, "C"),
               _response("It is red.", "?")]
  judge = EchoJudge()
  lines = grade(judge, responses)
  assert judge.asked == [("So the answer is B.", "B"), ("So the answer is 3.", "4"),
                         ("It is red.", "?")]
  assert lines == [{"index": 0, "verdict": "consistent"}, {"index": 2, "verdict": "inconsistent"},
                   {"index": 4, "verdict": "unknown"}]


def test_config_needs_evals_and_a_judge():
  with pytest.raises(ValueError, match="evals"):
    JudgeEvalConfig(judge=JudgeConfig(from_stage="judge_b"))
  with pytest.raises(ValueError, match="judge"):
    JudgeEvalConfig(evals=("eval",))
  assert JudgeEvalConfig(evals=("eval",), judge=JudgeConfig(from_stage="judge_b")).evals


def test_read_responses_names_bad_line_and_missing_file(tmp_path):
  path = tmp_path / "responses.jsonl"
  path.write_text(json.dumps({"text": "a"}) + "\n{broken\n")
  with pytest.raises(ValueError, match=r"responses.jsonl:2"):
    read_responses(str(path))
  with pytest.raises(FileNotFoundError, match="no responses"):
    read_responses(str(tmp_path / "missing.jsonl"))
