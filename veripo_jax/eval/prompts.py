"""The evaluation prompts, as the benchmarks' authors wrote them, and an item's prompt token ids.

Templates (select by name, e.g. from the eval config):

  veripo          the VerIPO authors' OPTION / NUMBER templates (reference/veripo_eval_protocol.md,
                  verbatim, typos included): the item's question with the line "Answer with the
                  option's letter from the given choices directly." deleted; OPTION when the
                  answer is alphabetic, NUMBER otherwise.
  video_r1        Video-R1's THINK template as its eval script `src/eval_bench.py` has it ("...
                  between the <think> and </think> tags, ... between the <answer> and </answer>
                  tags.") plus its per-problem-type suffix.
  video_r1_train  the same as Video-R1's training script `src/r1-v/src/open_r1/grpo.py` has it
                  ("... between the <think> </think> tags ..."): the project's
                  `data.prompts.VIDEO_R1_THINK`, which the training prompts use.

The message is one user turn: the video, then the item's picture if it has one (VideoMMMU
style), then the text; no system message, so Qwen2.5-VL's chat template adds its default "You are
a helpful assistant.". Token ids come from the project's `PromptEncoder` machinery (its chat
template, special ids and placeholder expansion), so eval prompts and training prompts are
rendered by one code path.
"""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedTokenizerBase

from veripo_jax.data.prompts import VIDEO_R1_THINK, VIDEO_R1_TYPE_SUFFIX, PromptTemplates
from veripo_jax.data.tokenization import PromptEncoder, expand_placeholders
from veripo_jax.data.vision import VisualInput
from veripo_jax.eval.benchmarks import EvalItem

# The VerIPO authors' templates (evaluation/evaluation_vllm.py), verbatim.
OPTION_TEMPLATE = (
    "You should first thinks about the reasoning process in the mind and then provides the user "
    "with the answer. Your answer must be in latex format and wrapped in $...$.The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> Since ...., so the answer is B. </think><answer> $B$ </answer>, "
    "which means your output should start with <think> and end with </answer>.\n"
    "Question:\n{Question}")
NUMBER_TEMPLATE = (
    "You should first thinks about the reasoning process in the mind and then provides the user "
    "with the answer. Your answer must be in latex format and wrapped in $...$.The reasoning "
    "process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
    "respectively, i.e., <think> Since ...., so the answer is $2$. </think><answer> $2$ </answer>, "
    "which means your output should start with <think> and end with </answer>.\n"
    "Question:\n{Question}\n"
    "You must provide the answer in the <answer> </answer> tag, and the answer must be a number.")
ANSWER_DIRECTLY_SUFFIX = "\nAnswer with the option's letter from the given choices directly."

# Video-R1's eval_bench.py QUESTION_TEMPLATE; its TYPE_TEMPLATE equals VIDEO_R1_TYPE_SUFFIX.
VIDEO_R1_EVAL_THINK = (
    "{Question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', "
    "'oh, I see', 'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> and </think> tags, and then give your "
    "final answer between the <answer> and </answer> tags.")
VIDEO_R1_TRAIN_THINK = VIDEO_R1_THINK.replace("{question}", "{Question}")

EVAL_TEMPLATES = ("veripo", "video_r1", "video_r1_train")


def is_option_answer(answer: str) -> bool:
  """The authors' rule: an alphabetic answer (a letter) is multiple choice."""
  return str(answer).isalpha()


def strip_answer_directly(question: str) -> str:
  return question.replace(ANSWER_DIRECTLY_SUFFIX, "")


def _fill(template: str, question: str) -> str:
  # One substitution, so braces inside the question stay literal.
  return template.replace("{Question}", question, 1)


def veripo_prompt(question: str, answer: str) -> str:
  """The VerIPO prompt for a `processed_question` and its gold answer."""
  template = OPTION_TEMPLATE if is_option_answer(answer) else NUMBER_TEMPLATE
  return _fill(template, strip_answer_directly(question))


def video_r1_prompt(question: str, problem_type: str, train: bool = False) -> str:
  """Video-R1's THINK prompt: template + the problem type's answer-form suffix."""
  if problem_type not in VIDEO_R1_TYPE_SUFFIX:
    raise ValueError(f"no Video-R1 suffix for problem_type {problem_type!r}; have "
                     f"{sorted(VIDEO_R1_TYPE_SUFFIX)}")
  template = VIDEO_R1_TRAIN_THINK if train else VIDEO_R1_EVAL_THINK
  return _fill(template, strip_answer_directly(question)) + VIDEO_R1_TYPE_SUFFIX[problem_type]


def prompt_text(item: EvalItem, template: str = "veripo") -> str:
  """The text part of an item's user message."""
  if template == "veripo":
    return _fill(OPTION_TEMPLATE if item.is_option else NUMBER_TEMPLATE,
                 strip_answer_directly(item.question))
  if template in ("video_r1", "video_r1_train"):
    return video_r1_prompt(item.question, item.problem_type, train=template == "video_r1_train")
  raise ValueError(f"unknown eval prompt template {template!r}; choose from "
                   f"{list(EVAL_TEMPLATES)}")


def eval_messages(item: EvalItem, template: str = "veripo") -> list[dict]:
  """The authors' message layout: one user turn — video, [image], text; no system message."""
  content: list[dict] = [{"type": "video"}]
  if item.image is not None:
    content.append({"type": "image"})
  content.append({"type": "text", "text": prompt_text(item, template)})
  return [{"role": "user", "content": content}]


class EvalPromptEncoder:
  """Eval items + their processed video (and picture) -> prompt token ids.

  Wraps a `PromptEncoder` for the chat template (a processor `chat_template.json` beside the
  tokenizer wins, as `load_tokenizer` arranges), the special ids and the merge size; each
  `<|video_pad|>` / `<|image_pad|>` becomes t·h·w/merge² copies as in transformers' processor.
  """

  def __init__(self, tokenizer: PreTrainedTokenizerBase, template: str = "veripo",
               merge_size: int = 2, chat_template: str | None = None):
    if template not in EVAL_TEMPLATES:
      raise ValueError(f"unknown eval prompt template {template!r}; choose from "
                       f"{list(EVAL_TEMPLATES)}")
    self.encoder = PromptEncoder(tokenizer, PromptTemplates({}), merge_size, chat_template)
    self.template = template

  @property
  def ids(self):
    return self.encoder.ids

  def messages(self, item: EvalItem) -> list[dict]:
    return eval_messages(item, self.template)

  def prompt_text(self, item: EvalItem) -> str:
    """The whole rendered prompt (chat template applied, one placeholder per visual item)."""
    return self.encoder.tokenizer.apply_chat_template(
        self.messages(item), chat_template=self.encoder.chat_template, tokenize=False,
        add_generation_prompt=True)

  def prompt_ids(self, item: EvalItem, video: VisualInput,
                 image: VisualInput | None = None) -> np.ndarray:
    if (item.image is None) != (image is None):
      raise ValueError(f"{item.benchmark}/{item.question_id}: the item "
                       f"{'has no' if item.image is None else 'has a'} picture but "
                       f"{'one' if image is not None else 'none'} was given")
    ids = self.encoder.tokenizer(self.prompt_text(item))["input_ids"]
    merge = self.encoder.merge_size
    ids = expand_placeholders(ids, self.ids.video, [video.num_tokens(merge)])
    if image is not None:
      ids = expand_placeholders(ids, self.ids.image, [image.num_tokens(merge)])
    return ids


def eval_prompt_ids(tokenizer: PreTrainedTokenizerBase, item: EvalItem, video: VisualInput,
                    image: VisualInput | None = None, template: str = "veripo",
                    merge_size: int = 2, chat_template: str | None = None) -> np.ndarray:
  """One-off form of `EvalPromptEncoder(...).prompt_ids(item, video, image)`."""
  return EvalPromptEncoder(tokenizer, template, merge_size, chat_template).prompt_ids(
      item, video, image)
