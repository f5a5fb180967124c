"""Records + visual inputs -> token ids with expanded vision placeholders.

Works with any local Hugging Face tokenizer directory (the real Qwen2.5-VL one or the synthetic
world's): the chat template renders one `<|video_pad|>` per item, which is then repeated
t·h·w/merge² times (the count the ViT will produce), exactly as the transformers processor does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import numpy as np
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from veripo_jax.data.prompts import QWEN_VL_CHAT_TEMPLATE, PromptTemplates
from veripo_jax.data.vision import VisualInput

SPECIAL_TOKENS = {
    "pad": "<|endoftext|>", "eos": "<|im_end|>", "vision_start": "<|vision_start|>",
    "vision_end": "<|vision_end|>", "image": "<|image_pad|>", "video": "<|video_pad|>",
}


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  pad: int
  eos: int
  vision_start: int
  vision_end: int
  image: int
  video: int

  @classmethod
  def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> "SpecialIds":
    ids = {}
    for field, token in SPECIAL_TOKENS.items():
      ids[field] = tokenizer.convert_tokens_to_ids(token)
      if ids[field] is None or ids[field] == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no special token {token}")
    return cls(**ids)


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
  """A local tokenizer directory; never reaches the network.

  A processor chat template saved beside it (`chat_template.json`, as Qwen2.5-VL checkpoints
  ship) wins over the tokenizer's own, as in transformers' processor: it is the one that
  renders the vision placeholders.
  """
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path}: tokenizer directory not found")
  tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
  processor_template = os.path.join(path, "chat_template.json")
  if os.path.exists(processor_template):
    with open(processor_template, encoding="utf-8") as f:
      tokenizer.chat_template = json.load(f)["chat_template"]
  return tokenizer


def expand_placeholders(ids: Sequence[int], pad_id: int, counts: Sequence[int]) -> np.ndarray:
  """Repeats the i-th occurrence of `pad_id` counts[i] times."""
  ids = np.asarray(ids, np.int32)
  where = np.flatnonzero(ids == pad_id)
  if len(where) != len(counts):
    raise ValueError(f"prompt has {len(where)} placeholder(s) for {len(counts)} visual item(s)")
  repeats = np.ones(len(ids), np.int64)
  repeats[where] = counts
  return np.repeat(ids, repeats)


class PromptEncoder:
  """Turns one record (+ its image/video) into prompt and gold-response token ids."""

  def __init__(self, tokenizer: PreTrainedTokenizerBase, templates: PromptTemplates,
               merge_size: int, chat_template: str | None = None):
    self.tokenizer = tokenizer
    self.templates = templates
    self.merge_size = merge_size
    self.chat_template = chat_template or tokenizer.chat_template or QWEN_VL_CHAT_TEMPLATE
    self.ids = SpecialIds.from_tokenizer(tokenizer)

  def messages(self, record: Mapping) -> list[dict]:
    content = [] if record["data_type"] == "text" else [{"type": record["data_type"]}]
    content.append({"type": "text", "text": self.templates.question_text(record)})
    system = self.templates.system_prompt
    head = [] if system is None else [{"role": "system", "content": system}]
    return head + [{"role": "user", "content": content}]

  def prompt_ids(self, record: Mapping, visual: VisualInput | None) -> np.ndarray:
    text = self.tokenizer.apply_chat_template(
        self.messages(record), chat_template=self.chat_template, tokenize=False,
        add_generation_prompt=True)
    ids = self.tokenizer(text)["input_ids"]
    if visual is None:
      return np.asarray(ids, np.int32)
    pad = self.ids.video if record["data_type"] == "video" else self.ids.image
    return expand_placeholders(ids, pad, [visual.num_tokens(self.merge_size)])

  def response_ids(self, record: Mapping) -> np.ndarray:
    """The gold response `<think>…</think><answer>…</answer>` closed by `<|im_end|>`."""
    ids = self.tokenizer(self.templates.response_text(record), add_special_tokens=False)
    return np.asarray(ids["input_ids"] + [self.ids.eos], np.int32)
