"""The benchmark eval end to end: a tiny random checkpoint, question files in the shipped format
with short videos made here, 8 simulated devices, the shipped eval config; report numbers
recomputed from the predictions; a killed run resumed writes exactly the uninterrupted file."""

import importlib.util
import json
import os
import types

import numpy as np
import pytest

from veripo_jax.eval.report import REPORT_JSON, REPORT_MD, REPORT_PNG
from veripo_jax.eval.runner import PREDICTIONS_FILE, judge_records
from veripo_jax.eval.scoring import official_score
from veripo_jax.eval.smoke import make_checkpoint, random_clip
from veripo_jax.rl.loop import run
from veripo_jax.rl.stage import Preempted
from veripo_jax.train.preemption import PreemptionGuard

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ITEMS = 11                      # per benchmark: 9 scored, one missing video, one corrupt


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  root = tmp_path_factory.mktemp("eval_world")
  ckpt = make_checkpoint(str(root / "ckpt"), seed=3)
  videos = root / "videos"
  (videos / "clips").mkdir(parents=True)
  for k in range(4):
    (videos / "clips" / f"c{k}.mp4").write_bytes(random_clip(1.0 + k, k))
  (videos / "clips" / "broken.mp4").write_bytes(b"not a video")
  files = {}
  for name in ("vsi_bench", "mmvu"):
    items = []
    for i in range(ITEMS):
      video = "clips/missing.mp4" if i == 9 else "clips/broken.mp4" if i == 10 else \
          f"clips/c{i % 4}.mp4"
      number = name == "vsi_bench" and i % 2
      question = "How many chair(s) are in this room?" + ("" if number else "\nA. 3\nB. 4")
      items.append(dict(question_id=f"{name}_{i}", video_path=video, question=question,
                        answer=str(i % 5 + 1) if number else "AB"[i % 2],
                        processed_question=question))
    files[name] = root / f"{name}.json"
    files[name].write_text(json.dumps(items))
  return dict(ckpt=ckpt, videos=str(videos), files=files)


def _config(world, **eval_overrides):
  spec = importlib.util.spec_from_file_location(
      "eval_cfg", os.path.join(REPO, "configs", "eval_qwen2_5_vl_7b.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  c = module.get_config("gpu")
  c.model.checkpoint = world["ckpt"]
  c.model.dtype = c.model.param_dtype = "float32"
  c.mesh.data = -1                        # all 8 simulated devices: one prompt each
  c.eval.benchmarks = ""
  c.eval.files = ",".join(f"{k}={v}" for k, v in world["files"].items())
  c.eval.video_root = world["videos"]
  c.eval.batch_size = 8
  c.eval.sort_window = 1
  c.eval.max_new_tokens = 6
  c.eval.max_pixels = 4 * 28 * 28
  c.eval.prompt_buckets = (256, 512)
  for key, value in eval_overrides.items():
    c.eval[key] = value
  return c


class StopAfterLines(PreemptionGuard):
  """Asks the eval to stop once the predictions file has lines (after its first batch)."""

  def __init__(self, path):
    super().__init__()
    self.path = path

  def should_stop(self):
    return os.path.exists(self.path) and os.path.getsize(self.path) > 0


@pytest.fixture(scope="module")
def finished(world, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("eval_run"))
  run(_config(world), workdir)
  return workdir


def _stage_file(workdir, name):
  return os.path.join(workdir, "stages", "benchmarks", name)


def _predictions(workdir):
  with open(_stage_file(workdir, PREDICTIONS_FILE)) as f:
    return [json.loads(line) for line in f]


def test_report_numbers_are_the_predictions(world, finished):
  records = _predictions(finished)
  with open(_stage_file(finished, REPORT_JSON)) as f:
    report = json.load(f)
  assert os.path.getsize(_stage_file(finished, REPORT_PNG)) > 0
  assert "| vsi_bench |" in open(_stage_file(finished, REPORT_MD)).read()
  gold = {}
  for name, path in world["files"].items():
    gold.update({(name, q["question_id"]): q["answer"] for q in json.loads(path.read_text())})
  by_name = {b["benchmark"]: b for b in report["benchmarks"]}
  assert set(by_name) == {"vsi_bench", "mmvu"}
  for name, b in by_name.items():
    mine = [r for r in records if r["benchmark"] == name]
    scored = [r for r in mine if "score" in r]
    assert len(scored) == 9 and b["scored"] == 9 and b["items"] == ITEMS
    assert b["missing_video"] == 1                         # never reaches the predictions
    assert b["unreadable"] == 1 and [r["question_id"] for r in mine if "skipped" in r] == \
        [f"{name}_10"]
    for r in scored:
      assert r["score"] == official_score(r["response"], gold[(name, r["question_id"])], name)
      assert 1 <= r["length"] <= 6
      assert r["truncated"] == (r["length"] == 6)          # a random model rarely stops
    assert b["score"] == pytest.approx(100 * np.mean([r["score"] for r in scored]))
    assert b["mean_length"] == pytest.approx(np.mean([r["length"] for r in scored]))
    assert b["truncated_rate"] == pytest.approx(np.mean([r["truncated"] for r in scored]))
    reasoned = [r for r in scored if r["has_reasoning"]]
    expected = np.mean([r["rule_consistent"] is not True for r in reasoned]) if reasoned \
        else None
    assert b["rule_inconsistency"] == (pytest.approx(expected) if reasoned else None)
    assert b["coverage"] == pytest.approx(9 / ITEMS)
  assert by_name["vsi_bench"]["paper"]["VerIPO-7B"] == 41.8
  types = by_name["vsi_bench"]["vsi_task_types"]
  assert types["n"] == 9 and types["per_type"]["object_counting"]["n"] == 9


def test_killed_eval_resumes_to_the_same_file(world, finished, tmp_path):
  workdir = str(tmp_path / "run")
  path = _stage_file(workdir, PREDICTIONS_FILE)
  with pytest.raises(Preempted):
    with StopAfterLines(path) as guard:
      run(_config(world), workdir, guard=guard)
  first = _predictions(workdir)
  assert 0 < len(first) < 2 * ITEMS - 2
  with open(path, "a") as f:                   # a crash in the middle of the next batch's write
    f.write(json.dumps({**first[0], "batch": "partial"}) + "\n" + '{"benchmark": "vs')
  run(_config(world), workdir)
  with open(_stage_file(finished, PREDICTIONS_FILE), "rb") as a, open(path, "rb") as b:
    assert a.read() == b.read()


class _FakeJudge:
  def __init__(self, replies):
    self.replies, self.asked = replies, []

  def verdicts(self, items):
    self.asked += items
    return self.replies[:len(items)]


def test_judge_verdicts_fall_back_to_the_rule():
  responses = ["<think>so the answer is A</think><answer>A</answer>",
               "<think>so the answer is A</think><answer>B</answer>",
               "<think>so the answer is A</think><answer>A</answer>",
               "<answer>A</answer>"]                     # no reasoning: not judged
  records = [{"response": r, "rule_consistent": c}
             for r, c in zip(responses, (True, False, True, None))]
  judge = _FakeJudge(["No.", None, "maybe"])
  judge_records(records, judge)
  assert len(judge.asked) == 3
  assert [r.get("judge_verdict") for r in records] == ["inconsistent", "inconsistent",
                                                       "consistent", None]
  assert [r.get("judge_fallback") for r in records] == [False, True, True, None]


@pytest.mark.slow
def test_a_served_judge_answers_and_its_failures_fall_back(world):
  """The eval's judge path against a real JetStream server: the tiny random judge never says
  Yes or No, so every verdict falls back to the rule, and is counted as such."""
  from veripo_jax.data.prompts import JUDGE_PROMPT
  from veripo_jax.rl.verifier_stage import JudgeConfig, serve_judge
  ctx = types.SimpleNamespace(tokenizer=None)
  judge_cfg = JudgeConfig(checkpoint=world["ckpt"], max_decode_length=8, max_prefill_length=256)
  records = [{"response": "<think>so the answer is A</think><answer>A</answer>",
              "rule_consistent": True},
             {"response": "<think>so the answer is A</think><answer>B</answer>",
              "rule_consistent": False}]
  with serve_judge(ctx, judge_cfg, JUDGE_PROMPT, 4) as judge:
    replies = judge.verdicts([("so the answer is A", "A")])
    judge_records(records, judge)
  assert isinstance(replies[0], str)                 # the server answered (with noise)
  assert [r["judge_fallback"] for r in records] == [True, True]
  assert [r["judge_verdict"] for r in records] == ["consistent", "inconsistent"]
