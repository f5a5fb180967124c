"""Labelled examples for the tiny consistency judge of the embedded default.

Each example takes a world question's templated reasoning, keeps its conclusion or rewrites it
to another candidate answer, and pairs it with an answer tag that either equals the conclusion
(label "Yes": consistent) or not ("No"). The two coins are independent, so the label says
nothing about correctness: the judge must compare the reasoning's conclusion with the tag, which
is the verifier's consistency check (reference/veripo_method.md §4). A fifth of the examples
keep only the reasoning's opening sentence, which concludes nothing (label "No").

The gold reply thinks briefly before the verdict, as a lookup:
`<think>The reasoning concludes B Yes. The final answer is C No.</think>No` ("concludes
nothing." when it does). It marks the reasoning's conclusion Yes, then writes the final answer
followed by its mark: Yes when the same value was marked before, otherwise No; the verdict
after the think block repeats that mark, and it is what the verifier reads
(`rl.verifier.parse_verdict`). The lookup is what an induction head computes (find the earlier
copy of this token, copy the token after it), a circuit two-layer transformers learn quickly.
Quoting the two values side by side and answering directly left the tiny judge at chance after
600 steps: equality of two tokens is not a copy.
"""

from __future__ import annotations

import re

from veripo_jax.data.prompts import JUDGE_PROMPT, render_judge_prompt
from veripo_jax.data.synthetic.world import LETTERS, WorldConfig, example_rng, make_example

JUDGE_SPLIT_PREFIX = "judge"      # dataset splits named judge* hold judge examples
YES, NO = "Yes", "No"
# Share of examples whose reasoning stops before stating any answer (label No: it does not
# "conclude with exactly this final answer", as the rule fallback treats it).
NO_CONCLUSION_SHARE = 0.2


def is_judge_split(split: str) -> bool:
  return split.startswith(JUDGE_SPLIT_PREFIX)


def candidates(record: dict) -> list[str]:
  """Answers a reasoning about this question could reach: option letters (at least A-D, so a
  one-option question has wrong letters too), or nearby non-negative numbers."""
  if record["problem_type"] == "multiple choice":
    return list(LETTERS[:max(4, len(record["options"]))])
  gold = int(record["answer"])
  return [str(v) for v in range(max(0, gold - 3), gold + 4)]


def _value_pattern(value: str) -> re.Pattern:
  if value.isdigit():
    return re.compile(rf"(?<![\w.]){value}(?![\w])")
  return re.compile(rf"(?<![A-Za-z0-9']){value}(?![A-Za-z0-9'])")


def restate(reasoning: str, old: str, new: str) -> str:
  """The reasoning with its last mention of `old` (its conclusion, in every world template)
  replaced by `new`."""
  matches = list(_value_pattern(old).finditer(reasoning))
  if not matches:
    raise ValueError(f"reasoning never states {old!r}: {reasoning!r}")
  last = matches[-1]
  return reasoning[:last.start()] + new + reasoning[last.end():]


def opening(reasoning: str) -> str:
  """The reasoning's first sentence ("Let me track the red circle."), which in every world
  template states no answer: what a policy that learned to stop thinking early writes."""
  match = re.match(r"[^.]*\.", reasoning)
  if not match:
    raise ValueError(f"reasoning has no sentence: {reasoning!r}")
  return match.group(0)


def make_judge_example(world: WorldConfig, seed: int, split: str, index: int,
                       prompt: str = JUDGE_PROMPT,
                       no_conclusion_share: float = NO_CONCLUSION_SHARE) -> dict:
  """One text-only record whose `problem` is the rendered judge prompt and `answer` Yes/No."""
  base, _ = make_example(world, seed, f"{split}/question", index)
  rng = example_rng(seed, split, index)
  gold, options = base["answer"], candidates(base)
  pick = lambda values: values[int(rng.integers(len(values)))]
  if rng.random() < no_conclusion_share:
    reasoning, answer, consistent = opening(base["reasoning"]), pick(options), False
    think = f"The reasoning concludes nothing. The final answer is {answer} {NO}."
  else:
    stated = gold if rng.random() < 0.5 else pick([c for c in options if c != gold])
    reasoning = restate(base["reasoning"], gold, stated)
    consistent = bool(rng.random() < 0.5)
    answer = stated if consistent else pick([c for c in options if c != stated])
    think = (f"The reasoning concludes {stated} {YES}. The final answer is {answer} "
             f"{YES if consistent else NO}.")
  return dict(id=f"{split}-{index}", data_type="text", difficulty=base["difficulty"],
              media_path="", problem_type="free-form",
              problem=render_judge_prompt(prompt, reasoning, answer), options=[],
              answer=YES if consistent else NO, task="judge", reasoning=think)
