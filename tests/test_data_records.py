"""Question files and TFDS builders: each malformed-input case names file/line/field; the VerIPO
evaluation files read completely, report missing videos, and build with a video root."""

import json
import pathlib

import pytest

from veripo_jax.data.datasets import (MissingMediaError, VeripoEvalBuilder, VideoR1Builder,
                                      data_source, skipped_at_build)
from veripo_jax.data.errors import DataFormatError
from veripo_jax.data.records import read_veripo_eval, read_video_r1
from veripo_jax.data.synthetic.render import encode_video
from PIL import Image

EVAL_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared/benchmarks/veripo_eval"
GOOD = {"problem": "Which way?", "data_type": "video", "problem_type": "multiple choice",
        "options": ["A. left", "B. right"], "solution": "<answer>B</answer>", "path": "a.mp4"}


def _jsonl(tmp_path, lines, name="q.jsonl"):
  path = tmp_path / name
  path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l) for l in lines) + "\n")
  return str(path)


def _clip(path: pathlib.Path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(encode_video([Image.new("RGB", (56, 56), (i * 40, 0, 0)) for i in range(4)], 2))


def test_video_r1_jsonl_and_json(tmp_path):
  text = {"problem": "2+2?", "data_type": "text", "problem_type": "numerical",
          "solution": "<answer>4</answer>"}
  records = read_video_r1(_jsonl(tmp_path, [GOOD, "", text]))
  assert [r["answer"] for r in records] == ["B", "4"]
  assert records[1]["where"].endswith("q.jsonl:3") and records[1]["media_path"] == ""
  path = tmp_path / "q.json"
  path.write_text(json.dumps([GOOD]))
  assert read_video_r1(str(path))[0]["options"] == GOOD["options"]


def test_malformed_json_line_names_file_and_line(tmp_path):
  path = _jsonl(tmp_path, [GOOD, '{"problem": "x",'])
  with pytest.raises(DataFormatError, match=r"q\.jsonl:2: malformed JSON line"):
    read_video_r1(path)


def test_unknown_problem_type_and_data_type(tmp_path):
  with pytest.raises(DataFormatError, match=r"q\.jsonl:1: unknown problem_type 'essay'"):
    read_video_r1(_jsonl(tmp_path, [{**GOOD, "problem_type": "essay"}]))
  with pytest.raises(DataFormatError, match=r"q\.jsonl:2: unknown data_type 'audio'"):
    read_video_r1(_jsonl(tmp_path, [GOOD, {**GOOD, "data_type": "audio"}]))


@pytest.mark.parametrize("field", ["problem", "solution", "path", "options", "problem_type"])
def test_missing_required_field(tmp_path, field):
  item = {k: v for k, v in GOOD.items() if k != field}
  with pytest.raises(DataFormatError, match=rf"q\.jsonl:1: missing required field '{field}'"):
    read_video_r1(_jsonl(tmp_path, [item]))


def test_eval_file_missing_field(tmp_path):
  path = tmp_path / "e.json"
  path.write_text(json.dumps([{"question_id": "1", "video_path": "v.mp4", "answer": "A"}]))
  with pytest.raises(DataFormatError, match=r"e\.json\[0\]: missing required field "
                                            r"'processed_question'"):
    read_veripo_eval(str(path))


@pytest.mark.parametrize("name,count", [("vsi_bench", 5130), ("mmvu", 625), ("tomato", 1484),
                                        ("lvbench", 1549), ("video_mme", 2700)])
def test_reads_veripo_eval_files(name, count):
  records = read_veripo_eval(EVAL_DIR / f"{name}.json")
  assert len(records) == count
  types = {r["problem_type"] for r in records}
  assert types == ({"multiple choice", "regression"} if name == "vsi_bench"
                   else {"multiple choice"})


def _eval_subset(tmp_path, n=3):
  items = json.loads((EVAL_DIR / "mmvu.json").read_text())[:n]
  path = tmp_path / "mmvu_small.json"
  path.write_text(json.dumps(items))
  return str(path), items


def test_eval_builder_reports_each_missing_video(tmp_path):
  path, items = _eval_subset(tmp_path)
  builder = VeripoEvalBuilder(split_files={"test": path}, media_root=str(tmp_path / "videos"),
                              data_dir=str(tmp_path / "tfds"), file_format="array_record")
  with pytest.raises(MissingMediaError) as e:
    builder.download_and_prepare()
  message = str(e.value)
  assert message.startswith("3 media file(s) not found")
  for i, item in enumerate(items):
    assert f"mmvu_small.json[{i}]: missing video {tmp_path / 'videos' / item['video_path']}" \
        in message


def test_missing_videos_are_summarised_not_listed(tmp_path):
  items = [dict(question_id=f"q{i}", video_path=f"v{i}.mp4", question="Q?", answer="A",
                processed_question="Q?\nA. x\nB. y") for i in range(40)]
  path = tmp_path / "many.json"
  path.write_text(json.dumps(items))
  builder = VeripoEvalBuilder(split_files={"test": str(path)}, media_root=str(tmp_path / "v"),
                              data_dir=str(tmp_path / "tfds"), file_format="array_record")
  with pytest.raises(MissingMediaError) as e:
    builder.download_and_prepare()
  lines = str(e.value).splitlines()
  assert lines[0].startswith("40 media file(s) not found")
  assert len(lines) == 7 and lines[-1] == "... and 35 more"


def test_eval_builder_builds_with_video_root(tmp_path):
  path, items = _eval_subset(tmp_path)
  for item in items[:2]:
    _clip(tmp_path / "videos" / item["video_path"])
  builder = VeripoEvalBuilder(split_files={"test": path}, media_root=str(tmp_path / "videos"),
                              allow_missing_media=True, data_dir=str(tmp_path / "tfds"),
                              file_format="array_record")
  builder.download_and_prepare()
  assert skipped_at_build(builder.data_dir) == {"test": 1}
  source = data_source(builder.data_dir, "test")
  stored = sorted((source[i] for i in range(len(source))), key=lambda r: r["id"])
  assert [r["id"].decode() for r in stored] == sorted(i["question_id"] for i in items[:2])
  for record in stored:
    item = next(i for i in items if i["question_id"] == record["id"].decode())
    assert record["media"] == (tmp_path / "videos" / item["video_path"]).read_bytes()
    assert record["answer"].decode() == item["answer"]
    assert record["problem"].decode() == item["processed_question"]


def test_video_r1_builder_with_text_and_missing_media(tmp_path):
  _clip(tmp_path / "media" / "a.mp4")
  text = {"problem": "2+2?", "data_type": "text", "problem_type": "numerical",
          "solution": "<answer>4</answer>"}
  path = _jsonl(tmp_path, [GOOD, text, {**GOOD, "path": "gone.mp4"}])
  builder = VideoR1Builder(name="demo", split_files={"train": path},
                           media_root=str(tmp_path / "media"), data_dir=str(tmp_path / "tfds"),
                           file_format="array_record")
  with pytest.raises(MissingMediaError, match=r"q\.jsonl:3: missing video .*gone\.mp4"):
    builder.download_and_prepare()
  builder = VideoR1Builder(name="demo", split_files={"train": path}, allow_missing_media=True,
                           media_root=str(tmp_path / "media"), data_dir=str(tmp_path / "tfds"),
                           file_format="array_record")
  builder.download_and_prepare()
  source = data_source(builder.data_dir, "train")
  assert len(source) == 2 and skipped_at_build(builder.data_dir) == {"train": 1}
  assert {source[i]["data_type"] for i in range(2)} == {b"video", b"text"}
