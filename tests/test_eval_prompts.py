"""Eval prompts: the authors' templates verbatim, and prompt ids equal to what transformers'
Qwen2.5-VL processor makes from the authors' message layout (video, [picture], text)."""

import base64
import io
import json
import os

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from hf_reference import GridOnlyVideoProcessor, StubVideoProcessor
from veripo_jax.data.prompts import QWEN_VL_CHAT_TEMPLATE
from veripo_jax.data.synthetic.tokenizer import build_tokenizer
from veripo_jax.data.vision import VisionSettings, VisualInput, process_image
from veripo_jax.eval import prompts
from veripo_jax.eval.benchmarks import (SHIPPED_BENCHMARKS, load_benchmark, question_file,
                                        shipped_questions_dir)

QUESTIONS_DIR = shipped_questions_dir()
needs_shipped = pytest.mark.skipif(
    not os.path.isdir(QUESTIONS_DIR),
    reason=f"shipped question files not found at {os.path.normpath(QUESTIONS_DIR)}")

# The authors' templates, written out here independently of the module.
OPTION_HEAD = (
    "You should first thinks about the reasoning process in the mind and then provides the user "
    "with the answer. Your answer must be in latex format and wrapped in $...$.The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> Since ...., so the answer is B. </think><answer> $B$ </answer>, "
    "which means your output should start with <think> and end with </answer>.\nQuestion:\n")
NUMBER_HEAD = OPTION_HEAD.replace("the answer is B. </think><answer> $B$ </answer>",
                                  "the answer is $2$. </think><answer> $2$ </answer>")
NUMBER_TAIL = ("\nYou must provide the answer in the <answer> </answer> tag, and the answer must "
               "be a number.")
SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
VIDEO = "<|vision_start|><|video_pad|><|vision_end|>"
GRID = (4, 6, 8)   # t, h, w patches: 48 merged tokens


@pytest.fixture(scope="module")
def tokenizer():
  corpus = [prompts.OPTION_TEMPLATE, prompts.NUMBER_TEMPLATE, prompts.VIDEO_R1_EVAL_THINK,
            "How many table(s) are in this room? Which direction? A. B. C. D. E."] * 5
  return build_tokenizer(corpus, vocab_size=400)


def _hf_processor(tokenizer, fps):
  return StubVideoProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer,
                    video_processor=GridOnlyVideoProcessor(GRID, fps),
                    chat_template=QWEN_VL_CHAT_TEMPLATE)


def _authors_messages(item, text):
  """evaluation_vllm.py's layout: one user turn, video (with its sampling settings), the
  base64 picture when the item has one, then the text; no system message."""
  content = [{"type": "video", "video": item.video, "fps": item.fps,
              "max_pixels": 256 * 28 * 28, "max_frames": 128}]
  if item.image is not None:
    content.append({"type": "image",
                    "image": "data:image;base64," + base64.b64encode(item.image).decode()})
  content.append({"type": "text", "text": text})
  return [{"role": "user", "content": content}]


def _video(fps):
  return VisualInput(np.zeros((int(np.prod(GRID)), 1176), np.float32), np.array(GRID), 2 / fps,
                     sample_fps=fps)


def _hf_ids(tokenizer, item, text, image=None):
  processor = _hf_processor(tokenizer, item.fps)
  rendered = processor.apply_chat_template(_authors_messages(item, text), tokenize=False,
                                           add_generation_prompt=True)
  kwargs = {} if image is None else {"images": [image]}
  out = processor(text=[rendered], videos=[np.zeros((8, 84, 112, 3), np.uint8)],
                  return_tensors="np", **kwargs)
  return rendered, out["input_ids"][0]


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
  if not os.path.isdir(QUESTIONS_DIR):
    pytest.skip(f"shipped question files not found at {os.path.normpath(QUESTIONS_DIR)}")
  root = tmp_path_factory.mktemp("videos")
  return {name: load_benchmark(name, question_file(name, QUESTIONS_DIR), root).missing_items
          for name in SHIPPED_BENCHMARKS}


def _expected_text(item):
  question = item.question.replace(
      "\nAnswer with the option's letter from the given choices directly.", "")
  if item.answer.isalpha():
    return OPTION_HEAD + question
  return NUMBER_HEAD + question + NUMBER_TAIL


@pytest.mark.parametrize("name, index", [(n, 0) for n in SHIPPED_BENCHMARKS] +
                         [("vsi_bench", "first option")])
def test_prompt_ids_match_hf_processor(shipped, tokenizer, name, index):
  items = shipped[name]
  item = next(i for i in items if i.is_option) if index == "first option" else items[index]
  text = _expected_text(item)
  assert prompts.prompt_text(item) == text
  encoder = prompts.EvalPromptEncoder(tokenizer, "veripo", merge_size=2)
  rendered, hf = _hf_ids(tokenizer, item, text)
  assert encoder.prompt_text(item) == rendered
  assert rendered == f"{SYSTEM}<|im_start|>user\n{VIDEO}{text}<|im_end|>\n<|im_start|>assistant\n"
  ours = encoder.prompt_ids(item, _video(item.fps))
  np.testing.assert_array_equal(ours, hf)
  assert (ours == encoder.ids.video).sum() == np.prod(GRID) // 4
  assert ours.dtype == np.int32
  np.testing.assert_array_equal(prompts.eval_prompt_ids(tokenizer, item, _video(item.fps)), ours)
  # With no vision expansion the ids are the tokenizer's own chat-template tokenization.
  one_token = VisualInput(np.zeros((4, 1176), np.float32), np.array([1, 2, 2]), 1.0)
  plain = tokenizer.apply_chat_template(prompts.eval_messages(item), tokenize=True,
                                        add_generation_prompt=True)
  plain = plain["input_ids"] if isinstance(plain, dict) or hasattr(plain, "keys") else plain
  np.testing.assert_array_equal(encoder.prompt_ids(item, one_token), plain)


def _png(seed=0, size=(90, 70)):
  rng = np.random.default_rng(seed)
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def test_videommmu_item_with_picture(tokenizer, tmp_path):
  png = _png()
  question = {"question_id": "validation_Art_1", "video_path": "VideoMMMU/Art/1.mp4",
              "question": "Which painting matches the video's style?", "answer": "C",
              "processed_question": "Which painting matches the video's style?\nA. a\nB. b\n"
                                    "C. c\nD. d\nAnswer with the option's letter from the given "
                                    "choices directly.",
              "image": base64.b64encode(png).decode()}
  path = tmp_path / "videommmu.json"
  path.write_text(json.dumps([question]))
  (item,) = load_benchmark("videommmu", path, tmp_path).missing_items
  assert item.image == png
  assert [c["type"] for c in prompts.eval_messages(item)[0]["content"]] == [
      "video", "image", "text"]
  picture = process_image(item.image, VisionSettings())
  image = Image.open(io.BytesIO(png)).resize(
      (int(picture.grid_thw[2]) * 14, int(picture.grid_thw[1]) * 14), Image.Resampling.BICUBIC)
  text = OPTION_HEAD + "Which painting matches the video's style?\nA. a\nB. b\nC. c\nD. d"
  rendered, hf = _hf_ids(tokenizer, item, text, image=image)
  image_span = "<|vision_start|><|image_pad|><|vision_end|>"
  assert rendered == (f"{SYSTEM}<|im_start|>user\n{VIDEO}{image_span}{text}<|im_end|>\n"
                      f"<|im_start|>assistant\n")
  encoder = prompts.EvalPromptEncoder(tokenizer)
  ours = encoder.prompt_ids(item, _video(item.fps), picture)
  np.testing.assert_array_equal(ours, hf)
  video_at = np.flatnonzero(ours == encoder.ids.video)
  image_at = np.flatnonzero(ours == encoder.ids.image)
  assert len(image_at) == int(np.prod(picture.grid_thw)) // 4 and video_at[-1] < image_at[0]
  with pytest.raises(ValueError, match="has a picture but none was given"):
    encoder.prompt_ids(item, _video(item.fps))


@needs_shipped
def test_rendered_prompt_verbatim(tokenizer):
  """The whole prompt text for known items, written out by hand."""
  encoder = prompts.EvalPromptEncoder(tokenizer)
  data = load_benchmark("mmvu", question_file("mmvu", QUESTIONS_DIR), "/nonexistent")
  assert encoder.prompt_text(data.missing_items[0]) == (
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
      "<|vision_start|><|video_pad|><|vision_end|>You should first thinks about the reasoning "
      "process in the mind and then provides the user with the answer. Your answer must be in "
      "latex format and wrapped in $...$.The reasoning process and answer are enclosed within "
      "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> Since ...., so "
      "the answer is B. </think><answer> $B$ </answer>, which means your output should start "
      "with <think> and end with </answer>.\nQuestion:\nAssume that 2.24 liters of gas fully "
      "participates in the reaction shown in the video under the standard temperature and "
      "pressure condition, how many grams of precipitate are produced approximately?\nA. 10.0\n"
      "B. 5.0\nC. 12.0\nD. 15.0\nE. 20.0<|im_end|>\n<|im_start|>assistant\n")
  vsi = load_benchmark("vsi_bench", question_file("vsi_bench", QUESTIONS_DIR), "/nonexistent")
  assert prompts.prompt_text(vsi.missing_items[0]) == (
      "You should first thinks about the reasoning process in the mind and then provides the "
      "user with the answer. Your answer must be in latex format and wrapped in $...$.The "
      "reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
      "tags, respectively, i.e., <think> Since ...., so the answer is $2$. </think><answer> $2$ "
      "</answer>, which means your output should start with <think> and end with </answer>.\n"
      "Question:\nHow many table(s) are in this room?\nYou must provide the answer in the "
      "<answer> </answer> tag, and the answer must be a number.")


def test_video_r1_templates(tokenizer, tmp_path):
  path = tmp_path / "eval_mmvu.json"
  path.write_text(json.dumps([
      {"problem_id": 1, "problem": "Which gas {X} forms?", "data_type": "video",
       "problem_type": "multiple choice", "options": ["A. O2", "B. H2"],
       "solution": "<answer>B</answer>", "path": "./MMVU/1.mp4"},
      {"problem_id": 2, "problem": "How many?", "data_type": "video",
       "problem_type": "regression", "solution": "<answer>3</answer>", "path": "./MMVU/2.mp4"}]))
  mc, reg = load_benchmark("mmvu", path, tmp_path).missing_items
  think = ("Please think about this question as if you were a human pondering deeply. Engage in "
           "an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', 'oh, I "
           "see', 'let's break it down', etc, or other natural language thought expressions "
           "It's encouraged to include self-reflection or verification in the reasoning process. "
           "Provide your detailed reasoning between the <think> and </think> tags, and then give "
           "your final answer between the <answer> and </answer> tags.")
  assert prompts.prompt_text(mc, "video_r1") == (
      "Which gas {X} forms?Options:\nA. O2\nB. H2\n\n" + think + " Please provide only the "
      "single option letter (e.g., A, B, C, D, etc.) within the <answer> </answer> tags.")
  assert prompts.prompt_text(reg, "video_r1") == (
      "How many?\n" + think + " Please provide the numerical value (e.g., 42 or 3.14) within "
      "the <answer> </answer> tags.")
  train = think.replace("<think> and </think>", "<think> </think>").replace(
      "<answer> and </answer>", "<answer> </answer>")
  assert prompts.prompt_text(reg, "video_r1_train").startswith("How many?\n" + train + " ")
  # The VerIPO templates on a Video-R1 item: its question text, OPTION/NUMBER by answer kind.
  assert prompts.prompt_text(mc) == OPTION_HEAD + "Which gas {X} forms?Options:\nA. O2\nB. H2\n"
  assert prompts.prompt_text(reg) == NUMBER_HEAD + "How many?" + NUMBER_TAIL
  assert prompts.video_r1_prompt("Q?\nA. x\nAnswer with the option's letter from the given "
                                 "choices directly.", "multiple choice").startswith("Q?\nA. x\n"
                                                                                   "Please")
  ids = prompts.eval_prompt_ids(tokenizer, mc, _video(2.0), template="video_r1")
  assert tokenizer.decode(ids[ids != tokenizer.convert_tokens_to_ids("<|video_pad|>")]).endswith(
      "within the <answer> </answer> tags.<|im_end|>\n<|im_start|>assistant\n")
  with pytest.raises(ValueError, match="unknown eval prompt template 'r1'"):
    prompts.prompt_text(mc, "r1")
  with pytest.raises(ValueError, match="unknown eval prompt template 'r1'"):
    prompts.EvalPromptEncoder(tokenizer, "r1")


def test_option_rule_and_suffix():
  assert prompts.is_option_answer("B") and not prompts.is_option_answer("2.5")
  assert prompts.veripo_prompt("Q?\nA. x\nAnswer with the option's letter from the given "
                               "choices directly.", "A") == OPTION_HEAD + "Q?\nA. x"
  assert prompts.veripo_prompt("How far? {d}", "1.5") == NUMBER_HEAD + "How far? {d}" + NUMBER_TAIL
