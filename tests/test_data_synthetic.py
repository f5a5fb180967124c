"""The synthetic world: deterministic from a seed, gold answers agree with the rendered pixels,
its tokenizer is a standard HF directory with the Qwen special tokens; the data CLIs run."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from veripo_jax.data.datasets import data_source
from veripo_jax.data.prompts import get_templates
from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.synthetic.render import render_media
from veripo_jax.data.synthetic.teacher import teacher_reasoning
from veripo_jax.data.synthetic.tokenizer import QWEN_SPECIAL_TOKENS, TAG_TOKENS
from veripo_jax.data.synthetic.world import WorldConfig, make_example
from veripo_jax.data.tokenization import load_tokenizer
from veripo_jax.data.video import decode_frames
from veripo_jax.models.qwen2_5_vl.config import fit_to_tokenizer, get_preset
from veripo_jax.rl.answers import rule_consistent

WORLD = WorldConfig(tokenizer_corpus_examples=200, tokenizer_vocab_size=600)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _records(dataset_dir, split):
  source = data_source(dataset_dir, split)
  return sorted((source[i] for i in range(len(source))), key=lambda r: r["id"])


def test_same_seed_same_datasets(tmp_path):
  a = build_world(tmp_path / "a", seed=5, split_sizes={"train": 12, "heldout": 3}, world=WORLD)
  b = build_world(tmp_path / "b", seed=5, split_sizes={"train": 12, "heldout": 3}, world=WORLD)
  c = build_world(tmp_path / "c", seed=6, split_sizes={"train": 12, "heldout": 3}, world=WORLD)
  for split in ("train", "heldout"):
    ra, rb = _records(a.dataset_dir, split), _records(b.dataset_dir, split)
    assert len(ra) == len(rb) == {"train": 12, "heldout": 3}[split]
    for x, y in zip(ra, rb):
      assert x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
  assert [r["media"] for r in _records(c.dataset_dir, "train")] != \
      [r["media"] for r in _records(a.dataset_dir, "train")]
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (tmp_path / "a/tokenizer" / name).read_bytes() == \
        (tmp_path / "b/tokenizer" / name).read_bytes()


def test_examples_cover_types_levels_and_tasks():
  records = [make_example(WorldConfig(), 0, "train", i)[0] for i in range(300)]
  count = collections.Counter
  assert set(count(r["data_type"] for r in records)) == {"video", "image", "text"}
  assert set(count(r["difficulty"] for r in records)) == {1, 2, 3}
  assert set(count(r["problem_type"] for r in records)) == {"multiple choice", "numerical",
                                                            "regression"}
  assert set(count(r["task"] for r in records)) == {
      "direction", "first_appearance", "count", "visible_frames", "image_count", "image_color"}
  for r in records:
    # The chain's last state is the gold answer, stated where the verifier's rule reads it.
    assert r["reasoning"].endswith(f"So the answer is {r['answer']}.")
    assert rule_consistent(r["reasoning"], r["answer"], r["options"]) is True
    assert rule_consistent(r["reasoning"], str(int(r["answer"]) + 1) if r["answer"].isdigit()
                           else ("A" if r["answer"] != "A" else "B"), r["options"]) is False
    if r["problem_type"] == "multiple choice":
      assert any(o.startswith(r["answer"] + ". ") for o in r["options"])
    if r["data_type"] == "text":
      assert r["problem"].startswith("A video has 8 frames")
      assert r["problem"].count("px per frame") == r["problem"].count(":") >= 1


def test_gold_answers_match_rendered_video():
  cfg = WorldConfig()
  colors = dict(cfg.colors)
  checked = 0
  for index in range(40):
    record, things = make_example(cfg, 1, "train", index)
    if record["data_type"] != "video":
      continue
    decoded = decode_frames(render_media("video", things, cfg), lambda n, fps: np.arange(n))
    assert len(decoded.frames) == cfg.num_frames and decoded.video_fps == cfg.fps
    frames = np.stack([np.asarray(f, np.int32) for f in decoded.frames])
    for t in things:
      for f in (t.appear, t.vanish - 1):
        x, y = t.position(f)
        y = y + cfg.shape_size // 4 if t.shape == "triangle" else y   # the triangle's body
        occluded = any(o is not t and o.appear <= f < o.vanish and
                       max(abs(np.subtract(o.position(f), (x, y)))) <= cfg.shape_size
                       for o in things)
        if not occluded:
          assert np.abs(frames[f, y, x] - colors[t.color]).max() < 60, (record, t, f)
    if record["task"] == "count":
      assert int(record["answer"]) == len(things)
    if record["task"] == "visible_frames":
      t = next(t for t in things if t.name in record["problem"])
      assert int(record["answer"]) == t.frames_visible
    checked += 1
  assert checked >= 10


def test_world_tokenizer_directory(tmp_path):
  paths = build_world(tmp_path, seed=0, split_sizes={"train": 1}, world=WORLD)
  tokenizer = load_tokenizer(paths.tokenizer_dir)
  ids = [tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS + TAG_TOKENS]
  assert ids[:len(QWEN_SPECIAL_TOKENS)] == list(range(len(QWEN_SPECIAL_TOKENS)))
  for token in QWEN_SPECIAL_TOKENS + TAG_TOKENS:
    assert tokenizer.tokenize(f"a{token}b")[1] == token
  assert "<|vision_start|><|video_pad|><|vision_end|>" in tokenizer.chat_template
  assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
  config = fit_to_tokenizer(get_preset("tiny"), tokenizer)
  assert config.text.vocab_size >= len(tokenizer) and config.text.vocab_size % 64 == 0
  assert (config.video_token_id, config.eos_token_id) == (ids[7], ids[2])
  # A prompt with the Video-R1 template stays short: the templates are in the BPE corpus.
  assert len(tokenizer("Please think about this question as if you were a human pondering "
                       "deeply.")["input_ids"]) < 20
  # The world's gold response: its answer tag holds the very token its reasoning ends on.
  templates = get_templates("synthetic_think")
  for index in range(20):
    record = make_example(WORLD, 0, "train", index)[0]
    pieces = tokenizer.tokenize(templates.response_text(record))
    concluded = pieces[pieces.index("</think>") - 2]          # "... is B" "." "</think>"
    assert pieces[pieces.index("<answer>") + 1] == concluded


def _run(module, *args):
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


@pytest.mark.slow
def test_cli_builds_world_and_question_files(tmp_path):
  out = _run("veripo_jax.data.synthetic", f"--out={tmp_path / 'w'}", "--seed=2", "--train=6",
             "--heldout=2")
  assert "synthetic_video_qa/seed2/1.0.0" in out and "video_token_id" in out
  (tmp_path / "q.jsonl").write_text(json.dumps(
      {"problem": "1+1?", "data_type": "text", "problem_type": "numerical",
       "solution": "<answer>2</answer>"}) + "\n")
  out = _run("veripo_jax.data.build_dataset", "--format=video_r1",
             f"--split=train={tmp_path / 'q.jsonl'}", f"--data_dir={tmp_path / 'tfds'}",
             "--name=mine")
  assert "train: 1 examples" in out and len(data_source(out.split("dataset: ")[1].strip(),
                                                         "train")) == 1


def test_teacher_lapses_are_seeded_and_unsupported():
  cfg = WorldConfig(unsupported_conclusion_share=0.2, unfinished_reasoning_share=0.1)
  kinds = collections.Counter()
  for index in range(400):
    record = make_example(cfg, 0, "train", index)[0]
    reasoning = teacher_reasoning(record, cfg, 0, "train", index)
    assert reasoning == teacher_reasoning(record, cfg, 0, "train", index)
    verdict = rule_consistent(reasoning, record["answer"], record["options"])
    if reasoning == record["reasoning"]:
      kinds["kept"] += 1
      assert verdict is True
    elif verdict is None:                      # stops after its opening sentence
      kinds["unfinished"] += 1
      assert record["reasoning"].startswith(reasoning)
    else:                                      # concludes another answer, the tag stays gold
      kinds["unsupported"] += 1
      assert verdict is False and reasoning.rsplit(" ", 1)[0] == \
          record["reasoning"].rsplit(" ", 1)[0]
  assert abs(kinds["unsupported"] / 400 - 0.2) < 0.06
  assert abs(kinds["unfinished"] / 400 - 0.1) < 0.05
  plain = WorldConfig()
  record = make_example(plain, 0, "train", 3)[0]
  assert teacher_reasoning(record, plain, 0, "train", 3) == record["reasoning"]
  with pytest.raises(ValueError, match="sum to at most 1"):
    WorldConfig(unsupported_conclusion_share=0.7, unfinished_reasoning_share=0.4)
