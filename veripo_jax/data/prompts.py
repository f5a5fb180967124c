"""Prompt text: the question templates (config strings) and the Qwen2-VL chat template.

Templates are plain format strings keyed by problem type, so a config file can swap the Video-R1
THINK template for the VerIPO evaluation OPTION/NUMBER templates without code changes.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

# The chat template Qwen2-VL / Qwen2.5-VL processors ship: default system prompt, one
# <|vision_start|><|image_pad|/video_pad|><|vision_end|> per visual item, generation prompt.
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

# Video-R1's THINK prompt [Video-R1]: the question, a request for <think>/<answer>, and a
# per-problem-type instruction for the answer's form.
VIDEO_R1_THINK = (
    "{question}\n"
    "Please think about this question as if you were a human pondering deeply. "
    "Engage in an internal dialogue using expressions such as 'let me think', 'wait', 'Hmm', "
    "'oh, I see', 'let's break it down', etc, or other natural language thought expressions "
    "It's encouraged to include self-reflection or verification in the reasoning process. "
    "Provide your detailed reasoning between the <think> </think> tags, and then give your "
    "final answer between the <answer> </answer> tags.")
_NUMBER_SUFFIX = (" Please provide the numerical value (e.g., 42 or 3.14) within the "
                  "<answer> </answer> tags.")
VIDEO_R1_TYPE_SUFFIX = {
    "multiple choice": (" Please provide only the single option letter (e.g., A, B, C, D, etc.) "
                        "within the <answer> </answer> tags."),
    "numerical": _NUMBER_SUFFIX,
    "OCR": (" Please transcribe text from the image/video clearly and provide your text answer "
            "within the <answer> </answer> tags."),
    "free-form": " Please provide your text answer within the <answer> </answer> tags.",
    "regression": _NUMBER_SUFFIX,
}

# The synthetic world's short prompt: the same request for <think>/<answer> in a few words, so
# the tiny embedded-default model spends its compute on the video and the reasoning, not on a
# paragraph of instructions it cannot read.
SYNTHETIC_THINK = "{question}\nThink in <think> </think>, then answer in <answer> </answer>."
SYNTHETIC_TYPE_SUFFIX = {"multiple choice": " Answer with the option letter.",
                         "numerical": " Answer with a number.",
                         "regression": " Answer with a number."}

# VerIPO evaluation [decision: the authors' exact strings are not public; these ask for the same
# output form, `<think>…</think><answer> $X$ </answer>`].
VERIPO_OPTION = (
    "{question}\nThink step by step before answering. Put your reasoning in <think> </think> "
    "tags and then only the letter of the correct option in <answer> </answer> tags, "
    "i.e., <think> reasoning process here </think><answer> $X$ </answer>.")
VERIPO_NUMBER = (
    "{question}\nThink step by step before answering. Put your reasoning in <think> </think> "
    "tags and then only the final number in <answer> </answer> tags, "
    "i.e., <think> reasoning process here </think><answer> $42$ </answer>.")

# The Rollout-Aware Verifier's judge prompt [decision, reference/veripo_method.md §4]: the
# reply must be one word.
JUDGE_PROMPT = (
    "You check whether a model's reasoning supports its final answer.\n"
    "Reasoning:\n"
    "{reasoning}\n"
    "Final answer: {answer}\n"
    "Does the reasoning conclude with exactly this final answer? Reply with one word: Yes or No.")


def render_judge_prompt(template: str, reasoning: str, answer: str) -> str:
  """One pass over the placeholders, so braces or placeholders inside the texts stay literal."""
  values = {"reasoning": reasoning, "answer": answer}
  return re.sub(r"\{(reasoning|answer)\}", lambda m: values[m.group(1)], template)


RESPONSE_TEMPLATE = "<think>{reasoning}</think><answer>{answer}</answer>"


@dataclasses.dataclass(frozen=True)
class PromptTemplates:
  """Per-problem-type question templates ({question}) and the gold-response template."""
  by_problem_type: Mapping[str, str]
  options_header: str = "Options:\n"
  response: str = RESPONSE_TEMPLATE
  system_prompt: str | None = None    # None: the chat template's default system prompt

  def question_text(self, record: Mapping) -> str:
    problem_type = record["problem_type"]
    if problem_type not in self.by_problem_type:
      raise ValueError(f"{record.get('where', '?')}: no prompt template for problem_type "
                       f"{problem_type!r}; have {sorted(self.by_problem_type)}")
    question = record["problem"]
    if record["options"]:
      question += self.options_header + "".join(o + "\n" for o in record["options"])
    return self.by_problem_type[problem_type].format(question=question)

  def response_text(self, record: Mapping) -> str:
    return self.response.format(reasoning=record["reasoning"], answer=record["answer"])


TEMPLATES = {
    "video_r1_think": PromptTemplates(
        {k: VIDEO_R1_THINK + v for k, v in VIDEO_R1_TYPE_SUFFIX.items()}),
    # The answer tag repeats the reasoning's last token with its leading space, so the tiny
    # model copies one token id ("answer is B" -> " B") instead of learning " B" -> "B".
    "synthetic_think": PromptTemplates(
        {k: SYNTHETIC_THINK + v for k, v in SYNTHETIC_TYPE_SUFFIX.items()},
        response="<think>{reasoning}</think><answer> {answer}</answer>"),
    "veripo_eval": PromptTemplates(
        {"multiple choice": VERIPO_OPTION, "numerical": VERIPO_NUMBER,
         "regression": VERIPO_NUMBER}),
    # The judge's training examples: the rendered judge prompt in, a short think and the
    # one-word verdict out (data/synthetic/judge.py).
    "judge": PromptTemplates({"free-form": "{question}"},
                             response="<think>{reasoning}</think>{answer}"),
}


def get_templates(name: str) -> PromptTemplates:
  if name not in TEMPLATES:
    raise ValueError(f"unknown prompt template set {name!r}; choose from {sorted(TEMPLATES)}")
  return TEMPLATES[name]
