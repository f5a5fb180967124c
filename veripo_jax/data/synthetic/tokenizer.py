"""A small byte-level BPE tokenizer for the synthetic world, built offline and saved in HF format.

It carries the Qwen special tokens (so the same data code and chat template serve the real
tokenizer and this one) and `<think>`/`<answer>` tags as single tokens, which lets a tiny model
learn the output format quickly. Byte-level BPE encodes any text, so real prompt templates work.
"""

from __future__ import annotations

import os
from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from veripo_jax.data.prompts import QWEN_VL_CHAT_TEMPLATE
from veripo_jax.fileio import replace_dir, temp_dir_beside

# Qwen order: <|endoftext|>, <|im_start|>, <|im_end|> first, then the vision tokens.
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
# Kept readable on decode (not "special"), but always a single token.
TAG_TOKENS = ("<think>", "</think>", "<answer>", "</answer>")


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
  """Trains byte-level BPE on `corpus` and wraps it with the Qwen special tokens and template."""
  core = Tokenizer(models.BPE())
  core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  core.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=vocab_size, special_tokens=list(QWEN_SPECIAL_TOKENS), show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  core.train_from_iterator(corpus, trainer)
  core.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
  tokenizer = PreTrainedTokenizerFast(
      tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      bos_token=None, unk_token=None, model_max_length=32768,
      extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"})
  tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
  return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, path: str | os.PathLike) -> None:
  """Writes a standard tokenizer directory atomically (temp dir, then rename)."""
  path = os.fspath(path)
  tmp = temp_dir_beside(path)
  tokenizer.save_pretrained(tmp)
  replace_dir(tmp, path)
