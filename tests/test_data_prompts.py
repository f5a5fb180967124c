"""Prompt ids match transformers' Qwen2.5-VL processor + chat template (same tokenizer and grid);
batches pad to buckets with masks and M-RoPE positions from the model's rope index."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from hf_reference import GridOnlyVideoProcessor, StubVideoProcessor
from veripo_jax.data.batching import BatchSpec, Collator, bucket
from veripo_jax.data.prompts import QWEN_VL_CHAT_TEMPLATE, get_templates
from veripo_jax.data.synthetic.tokenizer import build_tokenizer, save_tokenizer
from veripo_jax.data.tokenization import PromptEncoder, expand_placeholders, load_tokenizer
from veripo_jax.data.vision import VisionSettings, VisualInput, process_image
from veripo_jax.models.qwen2_5_vl.rope_index import get_rope_index

CORPUS = ["In which direction does the red circle move? left right up down"] * 20


@pytest.fixture(scope="module")
def tokenizer():
  return build_tokenizer(CORPUS + list(get_templates("video_r1_think").by_problem_type.values()),
                         vocab_size=400)


RECORD = dict(id="x", data_type="video", problem_type="multiple choice",
              problem="In which direction does the red circle move?",
              options=["A. left", "B. right"], answer="B", reasoning="it goes right", task="")


def test_video_prompt_ids_match_hf_processor(tokenizer):
  grid = (3, 4, 6)
  encoder = PromptEncoder(tokenizer, get_templates("video_r1_think"), merge_size=2)
  visual = VisualInput(np.zeros((72, 1176), np.float32), np.array(grid), 2 / 1.5)
  ours = encoder.prompt_ids(RECORD, visual)
  processor = StubVideoProcessor(image_processor=Qwen2VLImageProcessorPil(), tokenizer=tokenizer,
                         video_processor=GridOnlyVideoProcessor(grid, 1.5),
                         chat_template=QWEN_VL_CHAT_TEMPLATE)
  text = processor.apply_chat_template(encoder.messages(RECORD), tokenize=False,
                                       add_generation_prompt=True)
  hf = processor(text=[text], videos=[np.zeros((6, 56, 84, 3), np.uint8)], return_tensors="np")
  np.testing.assert_array_equal(ours, hf["input_ids"][0])
  assert (ours == encoder.ids.video).sum() == 3 * 4 * 6 // 4
  np.testing.assert_allclose(hf["second_per_grid_ts"], [visual.second_per_grid_t])
  # The positions the batch carries equal the model's rope index over the processor's output.
  positions, _ = get_rope_index(hf["input_ids"], None, None, hf["video_grid_thw"],
                                hf["second_per_grid_ts"], image_token_id=encoder.ids.image,
                                video_token_id=encoder.ids.video)
  example = dict(prompt_ids=ours, data_type="video", pixel_values=visual.pixel_values,
                 grid_thw=visual.grid_thw, second_per_grid_t=visual.second_per_grid_t,
                 **{k: RECORD[k] for k in ("id", "answer", "problem_type", "task")})
  batch = _collator(encoder, BatchSpec(batch_size=1))([example])
  width = len(ours)
  np.testing.assert_array_equal(batch["position_ids"][:, 0, -width:], positions[:, 0])


def test_image_prompt_and_pixels_match_hf_processor(tokenizer):
  encoder = PromptEncoder(tokenizer, get_templates("video_r1_think"), merge_size=2)
  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
  settings = VisionSettings()
  visual = process_image(image, settings)
  record = {**RECORD, "data_type": "image"}
  processor = StubVideoProcessor(image_processor=Qwen2VLImageProcessorPil(),
                         tokenizer=tokenizer, video_processor=GridOnlyVideoProcessor((2, 2, 2), 2),
                         chat_template=QWEN_VL_CHAT_TEMPLATE)
  text = processor.apply_chat_template(encoder.messages(record), tokenize=False,
                                       add_generation_prompt=True)
  hf = processor(text=[text], images=[image.resize((visual.grid_thw[2] * 14,
                                                    visual.grid_thw[1] * 14),
                                                   Image.Resampling.BICUBIC)],
                 return_tensors="np")
  np.testing.assert_array_equal(encoder.prompt_ids(record, visual), hf["input_ids"][0])
  np.testing.assert_allclose(visual.pixel_values, hf["pixel_values"], atol=1e-5, rtol=0)


def test_text_prompt_and_response(tokenizer):
  encoder = PromptEncoder(tokenizer, get_templates("veripo_eval"), merge_size=2)
  record = {**RECORD, "data_type": "text", "options": []}
  text = tokenizer.decode(encoder.prompt_ids(record, None))
  assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                         "<|im_start|>user\nIn which direction")
  assert text.endswith("<answer> $X$ </answer>.<|im_end|>\n<|im_start|>assistant\n")
  response = encoder.response_ids(record)
  assert tokenizer.decode(response) == "<think>it goes right</think><answer>B</answer><|im_end|>"


def test_unknown_template_problem_type(tokenizer):
  encoder = PromptEncoder(tokenizer, get_templates("veripo_eval"), merge_size=2)
  with pytest.raises(ValueError, match="no prompt template for problem_type 'OCR'"):
    encoder.prompt_ids({**RECORD, "problem_type": "OCR", "where": "f:3"}, None)


def test_placeholder_count_mismatch():
  with pytest.raises(ValueError, match="2 placeholder"):
    expand_placeholders([1, 7, 2, 7], 7, [4])
  np.testing.assert_array_equal(expand_placeholders([1, 7, 2], 7, [3]), [1, 7, 7, 7, 2])


def _collator(encoder, spec):
  return Collator(spec, encoder.ids, patch_dim=1176, merge_size=2, tokens_per_second=2)


def test_collate_pads_to_buckets(tokenizer):
  encoder = PromptEncoder(tokenizer, get_templates("video_r1_think"), merge_size=2)
  spec = BatchSpec(batch_size=3, prompt_buckets=(256, 512), response_buckets=(16, 32),
                   patch_buckets=(64, 128), with_response=True, drop_remainder=False)
  visual = VisualInput(np.ones((48, 1176), np.float32), np.array([2, 4, 6]), 1.0)
  examples = []
  for kind in ("video", "text"):
    record = {**RECORD, "data_type": kind}
    ex = dict(prompt_ids=encoder.prompt_ids(record, visual if kind == "video" else None),
              response_ids=encoder.response_ids(record), data_type=kind,
              **{k: RECORD[k] for k in ("id", "answer", "problem_type", "task")})
    if kind == "video":
      ex.update(pixel_values=visual.pixel_values, grid_thw=visual.grid_thw, second_per_grid_t=1.0)
    examples.append(ex)
  batch = _collator(encoder, spec)(examples)
  lp = bucket(max(len(e["prompt_ids"]) for e in examples), spec.prompt_buckets)
  lr = bucket(max(len(e["response_ids"]) for e in examples), spec.response_buckets)
  assert batch["input_ids"].shape == (3, lp + lr)
  assert batch["pixel_values_videos"].shape == (64, 1176)
  assert batch["pixel_values"].shape == (0, 1176)
  np.testing.assert_array_equal(batch["example_mask"], [1, 1, 0])
  np.testing.assert_array_equal(batch["video_grid_thw"], [[2, 4, 6]])
  for row, ex in enumerate(examples):
    p, r = ex["prompt_ids"], ex["response_ids"]
    np.testing.assert_array_equal(batch["input_ids"][row, lp - len(p):lp], p)
    np.testing.assert_array_equal(batch["input_ids"][row, lp:lp + len(r)], r)
    assert batch["attention_mask"][row].sum() == len(p) + len(r)
    assert batch["response_mask"][row, lp:lp + len(r)].all()
    assert batch["response_mask"][row].sum() == len(r)
    # Positions of the real tokens equal the rope index of the unpadded sequence.
    seq = np.concatenate([p, r])[None]
    grids = np.array([[2, 4, 6]]) if ex["data_type"] == "video" else None
    pos, _ = get_rope_index(seq, None, None, grids, [1.0], image_token_id=encoder.ids.image,
                            video_token_id=encoder.ids.video)
    real = batch["attention_mask"][row].astype(bool)
    np.testing.assert_array_equal(batch["position_ids"][:, row, real], pos[:, 0])
  assert not batch["attention_mask"][2].any()
  assert bucket(0, (4,)) == 0 and bucket(9, (4, 8)) == 16


def test_processor_chat_template_beside_tokenizer_wins(tokenizer, tmp_path):
  text_only = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
  copy = build_tokenizer(CORPUS, vocab_size=300)
  copy.chat_template = text_only
  save_tokenizer(copy, tmp_path / "tok")
  assert load_tokenizer(tmp_path / "tok").chat_template == text_only
  (tmp_path / "tok/chat_template.json").write_text(
      json.dumps({"chat_template": QWEN_VL_CHAT_TEMPLATE}))
  loaded = load_tokenizer(tmp_path / "tok")
  encoder = PromptEncoder(loaded, get_templates("video_r1_think"), merge_size=2)
  visual = VisualInput(np.zeros((16, 1176), np.float32), np.array([1, 4, 4]), 1.0)
  assert (encoder.prompt_ids(RECORD, visual) == encoder.ids.video).sum() == 4
  with pytest.raises(FileNotFoundError, match="tokenizer directory not found"):
    load_tokenizer(tmp_path / "missing")
