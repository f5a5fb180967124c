"""Benchmark question files: the five shipped VerIPO files, Video-R1-format files, absent videos
counted (not raised), and malformed input named by file, item and field."""

import base64
import json
import os

import pytest

from veripo_jax.data.errors import DataFormatError
from veripo_jax.eval.benchmarks import (SHIPPED_BENCHMARKS, EvalItem, load_benchmark,
                                        question_file, shipped_questions_dir)

QUESTIONS_DIR = shipped_questions_dir()
needs_shipped = pytest.mark.skipif(
    not os.path.isdir(QUESTIONS_DIR),
    reason=f"shipped question files not found at {os.path.normpath(QUESTIONS_DIR)}")

# name -> (items, option items, number items, fps)
SHIPPED = {"vsi_bench": (5130, 2490, 2640, 2.0), "mmvu": (625, 625, 0, 2.0),
           "tomato": (1484, 1484, 0, 4.0), "lvbench": (1549, 1549, 0, 2.0),
           "video_mme": (2700, 2700, 0, 2.0)}


def _write(path, data):
  path.write_text(json.dumps(data))
  return path


@needs_shipped
@pytest.mark.parametrize("name", SHIPPED_BENCHMARKS)
def test_shipped_files(name, tmp_path):
  total, options, numbers, fps = SHIPPED[name]
  data = load_benchmark(name, question_file(name, QUESTIONS_DIR), tmp_path)
  assert (data.total, data.missing, data.items) == (total, total, ())
  items = data.missing_items
  assert sum(i.answer_kind == "option" for i in items) == options
  assert sum(i.answer_kind == "number" for i in items) == numbers
  assert all(i.answer.isalpha() == (i.answer_kind == "option") for i in items)
  assert all(i.problem_type == ("multiple choice" if i.is_option else "regression")
             for i in items)
  assert len({i.question_id for i in items}) == total
  assert {i.fps for i in items} == {fps}
  assert all(i.source_format == "veripo" and i.benchmark == name for i in items)
  assert [i.index for i in items] == list(range(total))
  assert all(i.video.startswith(str(tmp_path) + os.sep) for i in items)
  assert data.renumbered == (151 if name == "tomato" else 0)
  assert data.source_format == "veripo"


@needs_shipped
def test_shipped_item_fields(tmp_path):
  vsi = load_benchmark("vsi_bench", question_file("vsi_bench", QUESTIONS_DIR), tmp_path)
  first = vsi.missing_items[0]
  assert first == EvalItem(
      benchmark="vsi_bench", question_id="vsi_bench_78",
      video=str(tmp_path / "VSI-Bench/arkitscenes/45260905.mp4"),
      question="How many table(s) are in this room?", answer="2", answer_kind="number",
      problem_type="regression", fps=2.0, source_format="veripo", index=0,
      source_id="vsi_bench_78", raw_question="How many table(s) are in this room?",
      scene_name="45260905")
  mc = next(i for i in vsi.missing_items if i.options)
  assert mc.options == ("A. front-left", "B. back-right", "C. front-right", "D. back-left")
  # lvbench has four integer ids; they become strings.
  lv = load_benchmark("lvbench", question_file("lvbench", QUESTIONS_DIR), tmp_path)
  assert {"3641", "3646", "3642", "3630"} <= {i.question_id for i in lv.missing_items}
  # TOMATO's ids name the clip; clips with several questions get numbered ids.
  tomato = load_benchmark("tomato", question_file("tomato", QUESTIONS_DIR), tmp_path)
  numbered = [i for i in tomato.missing_items if i.source_id == "0621-00"]
  assert [i.question_id for i in numbered] == ["0621-00#1", "0621-00#2"]
  with pytest.raises(DataFormatError, match=r"tomato.json: 62 question_id\(s\) repeat: "
                     r"'0621-00' \(items \d+, \d+\)"):
    load_benchmark("tomato", question_file("tomato", QUESTIONS_DIR), tmp_path,
                   duplicate_ids="error")


@needs_shipped
def test_missing_videos_are_counted(tmp_path, capsys):
  path = question_file("vsi_bench", QUESTIONS_DIR)
  with open(path) as f:
    raw = json.load(f)
  present = {"VSI-Bench/arkitscenes/45260905.mp4", "VSI-Bench/scannetpp/3e8bba0176.mp4"}
  for rel in present:
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / rel).write_bytes(b"")
  (tmp_path / "VSI-Bench/scannet").mkdir()          # a directory is not a video
  expected = [i for i, x in enumerate(raw) if x["video_path"] in present]
  data = load_benchmark("vsi_bench", path, tmp_path)
  assert [i.index for i in data.items] == expected and len(expected) > 2
  assert data.missing == len(raw) - len(expected) and data.total == len(raw)
  assert [i.index for i in data.missing_items] == sorted(set(range(len(raw))) - set(expected))
  line = data.summary()
  assert line.startswith(f"vsi_bench: {len(expected)} of 5130 items have their video; "
                         f"{data.missing} skipped")
  assert line.count(".mp4") == 3                   # a few examples, not every absent video
  assert capsys.readouterr().out == ""              # nothing printed one by one


def test_question_file_resolution(tmp_path):
  for name in SHIPPED_BENCHMARKS:                   # shipped inside the package
    assert os.path.isfile(question_file(name, shipped_questions_dir()))
  with pytest.raises(ValueError, match="unknown benchmark 'videommmu'; the shipped ones"):
    question_file("videommmu", tmp_path)
  with pytest.raises(FileNotFoundError, match="mmvu.json: question file of benchmark 'mmvu'"):
    question_file("mmvu", tmp_path)
  _write(tmp_path / "mmvu.json", [])
  assert question_file("mmvu", tmp_path) == str(tmp_path / "mmvu.json")


VIDEO_R1 = [
    {"problem_id": 7, "problem": "Which way does it turn?", "data_type": "video",
     "problem_type": "multiple choice", "options": ["A. left", "B. right"],
     "solution": "<answer>B</answer>", "path": "./VSI-Bench/scene1.mp4",
     "data_source": "VSI-Bench"},
    {"problem_id": 8, "problem": "How far apart are they (m)?", "data_type": "video",
     "problem_type": "regression", "options": [], "solution": "<answer> 2.5 </answer>",
     "path": "./VSI-Bench/scene2.mp4"},
    {"problem": "How many cups?", "data_type": "video", "problem_type": "numerical",
     "solution": "<answer>3</answer>", "path": "./VSI-Bench/scene1.mp4"},
]


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_video_r1_format(tmp_path, suffix):
  path = tmp_path / f"eval_vsibench.{suffix}"
  if suffix == "json":
    _write(path, VIDEO_R1)
  else:
    path.write_text("".join(json.dumps(x) + "\n" for x in VIDEO_R1))
  (tmp_path / "VSI-Bench").mkdir()
  (tmp_path / "VSI-Bench/scene1.mp4").write_bytes(b"\0")
  data = load_benchmark("vsibench", path, tmp_path)
  assert data.source_format == "video_r1" and (data.total, data.missing) == (3, 1)
  mc, count = data.items
  assert mc == EvalItem(
      benchmark="vsibench", question_id="7", video=str(tmp_path / "VSI-Bench/scene1.mp4"),
      question="Which way does it turn?Options:\nA. left\nB. right\n", answer="B",
      answer_kind="option", problem_type="multiple choice", fps=2.0, source_format="video_r1",
      index=0, source_id="7", raw_question="Which way does it turn?",
      options=("A. left", "B. right"))
  assert (count.question_id, count.question, count.answer, count.answer_kind,
          count.problem_type) == ("2", "How many cups?", "3", "number", "numerical")
  far = data.missing_items[0]
  assert (far.answer, far.answer_kind, far.video) == (
      "2.5", "number", str(tmp_path / "VSI-Bench/scene2.mp4"))
  # fps override; a forced format that does not fit names the missing field.
  assert load_benchmark("vsibench", path, tmp_path, fps=1.0).items[0].fps == 1.0
  with pytest.raises(DataFormatError, match=r"missing required field 'answer'"):
    load_benchmark("vsibench", path, tmp_path, source_format="veripo")


def _veripo_item(**overrides):
  item = {"question_id": "q0", "video_path": "B/v0.mp4", "question": "What?",
          "answer": "A", "processed_question": "What?\nA. x\nB. y"}
  item.update(overrides)
  return item


def test_image_field_is_decoded(tmp_path):
  png = b"\x89PNG\r\n\x1a\nfake"
  items = [_veripo_item(image=base64.b64encode(png).decode()),
           _veripo_item(question_id="q1", image="data:image/png;base64,"
                        + base64.b64encode(png).decode()),
           _veripo_item(question_id="q2")]
  data = load_benchmark("videommmu", _write(tmp_path / "v.json", items), tmp_path)
  assert [i.image for i in data.missing_items] == [png, png, None]


@pytest.mark.parametrize("content, message", [
    ({"questions": []}, r"v\.json: expected a JSON list of questions, got dict"),
    ([], r"v\.json: the question file has no items"),
    ([_veripo_item(), "q1"], r"v\.json\[1\]: expected a JSON object, got str"),
    ([_veripo_item(), {"question_id": "q1", "video_path": "B/v.mp4", "question": "x",
                       "answer": "B"}],
     r"v\.json\[1\]: missing required field 'processed_question'"),
    ([_veripo_item(), _veripo_item(question_id="q1", video_path=None)],
     r"v\.json\[1\]: missing required field 'video_path'"),
    ([_veripo_item(answer=["A"])], r"v\.json\[0\]: field 'answer' must be str/int/float, got list"),
    ([_veripo_item(answer=" ")], r"v\.json\[0\]: field 'answer' is empty"),
    ([_veripo_item(options="A. x")], r"v\.json\[0\]: field 'options' must be a list of strings"),
    ([_veripo_item(image="not base64!")], r"v\.json\[0\]: field 'image' is not valid base64"),
    ([_veripo_item(), _veripo_item(processed_question="Other?"), _veripo_item(question_id="q1")],
     r"v\.json: 1 question_id\(s\) repeat: 'q0' \(items 0, 1\)"),
    ([{"nothing": 1}], r"v\.json\[0\]: neither a VerIPO question"),
    ([{**VIDEO_R1[0], "problem_type": "OCR"}],
     r"v\.json\[0\]: problem_type 'OCR' has no scoring rule"),
    ([{**VIDEO_R1[0], "data_type": "image"}], r"v\.json\[0\]: data_type 'image' is not evaluated"),
    ([VIDEO_R1[0], {**VIDEO_R1[1], "solution": None}],
     r"v\.json\[1\]: missing required field 'solution'"),
    ([{**VIDEO_R1[0], "options": []}], r"v\.json\[0\]: missing required field 'options'"),
    ([VIDEO_R1[0], {**VIDEO_R1[1], "problem_id": 7}],
     r"v\.json: 1 question_id\(s\) repeat: '7' \(items 0, 1\)"),
])
def test_bad_input_names_file_item_and_field(tmp_path, content, message):
  path = _write(tmp_path / "v.json", content)
  with pytest.raises(ValueError, match=message):
    load_benchmark("bench", path, tmp_path)


def test_malformed_json_names_line(tmp_path):
  path = tmp_path / "v.json"
  path.write_text('[\n{"question_id": 1,\n')
  with pytest.raises(DataFormatError, match=r"v\.json:3: malformed JSON"):
    load_benchmark("bench", path, tmp_path)


def test_duplicate_id_policy(tmp_path):
  items = [_veripo_item(), _veripo_item(processed_question="Other?"),
           _veripo_item(question_id="q1")]
  path = _write(tmp_path / "v.json", items)
  data = load_benchmark("bench", path, tmp_path, duplicate_ids="number")
  assert [i.question_id for i in data.missing_items] == ["q0#1", "q0#2", "q1"]
  assert [i.source_id for i in data.missing_items] == ["q0", "q0", "q1"]
  assert data.renumbered == 2
  # The same question on the same video twice is an error under either policy.
  _write(path, [_veripo_item(), _veripo_item()])
  with pytest.raises(DataFormatError, match=r"same question on the same video .* 'q0' "
                     r"\(items 0, 1\)"):
    load_benchmark("bench", path, tmp_path, duplicate_ids="number")
  # Numbering must not collide with an id already in the file.
  _write(path, [_veripo_item(), _veripo_item(processed_question="Other?"),
                _veripo_item(question_id="q0#1", processed_question="Third?")])
  with pytest.raises(DataFormatError, match=r"collides with existing ids: .*'q0#1'"):
    load_benchmark("bench", path, tmp_path, duplicate_ids="number")
  with pytest.raises(ValueError, match="unknown duplicate_ids policy 'skip'"):
    load_benchmark("bench", path, tmp_path, duplicate_ids="skip")
  with pytest.raises(ValueError, match="unknown question-file format 'csv'"):
    load_benchmark("bench", path, tmp_path, source_format="csv")
