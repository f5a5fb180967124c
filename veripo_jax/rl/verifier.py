"""The Rollout-Aware Verifier (reference/veripo_method.md §4): checks every GRPO rollout and
builds the DPO preference pairs.

Input contract: the JSON-line records of `Rollouts.records()` (`prompt_id`, `sample`, `tokens`
with EOS, `truncated`, `text`, ...) plus, per record, `source_index` (the example's position in
its split, which a `Pair` names), `answer` (the gold answer) and `problem_type`; `options` is
optional (maps an answer given as option text to its letter). Records with no tokens (padding
prompts of a partial batch) are skipped. A group is every record sharing a `prompt_id`, so
records of several rounds may be concatenated.

Checks per rollout i, on r_i (think text) and a_i (answer text):
  accuracy      r_a of §2 recomputed from the text and gold (not read from the stored rewards,
                whose names and weights are the GRPO stage's choice); correct ⇔ r_a ≥
                correct_threshold.
  length        tokens of r_i under the `encode` given to `verify` (the tokenizer that encodes
                reflection pairs), compared with `max_reasoning_tokens`.
  truncated     the sampler's flag: the length limit was hit without EOS, so no finished
                `</answer>` (a response that stopped without `</answer>` fails the format check).
  repetition    `repetition_ratio` on r_i's words (see there).
  consistency   the judge's Yes/No; anything else falls back to `rule_consistent`, and a
                reasoning that states no answer is inconsistent (`undecided_is_inconsistent`;
                with `conclusion_required`, whatever the judge says). Only rollouts with a
                non-empty think and answer are judged.
A rollout is good if well-formed, correct, consistent, not repetitive and not truncated.

Pairs per prompt (chosen is always the preferred good rollout: the longest reasoning within
`max_reasoning_tokens`, then those over it from the shortest; ties broken by `seed`). Families
take turns in `families` order, one pair each per turn, until `max_pairs_per_prompt`; a rollout
is rejected in at most one pair. Rejected candidates, best first:
  consistency   inconsistent rollouts, correct ones first (§4).
  penalty       repetitive, truncated or badly formatted ones, correct ones first (the pair then
                differs by the defect alone).
  accuracy      incorrect ones, clean (well-formed, not repetitive, not truncated) ones first.
  reflection    clean incorrect ones whose reasoning is non-empty and whose joined reasoning
                (r_wrong + phrase + r_good) fits `max_reasoning_tokens`; a repetitive or
                unfinished r_wrong would be taught as part of the chosen response.
Default order: consistency (the verifier's own signal, the inconsistency the method targets),
penalty (degenerate outputs GRPO rewards only through format), accuracy (what GRPO already
optimizes), reflection (synthetic, off-policy text) last. Families are registered by name in
`rl.pair_families`, where a new one is one `register_pair_family` call.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import re
from typing import Any, Mapping, Protocol, Sequence

from veripo_jax.data.prompts import JUDGE_PROMPT, render_judge_prompt
from veripo_jax.fileio import write_json_atomic, write_jsonl_atomic
from veripo_jax.rl.artifacts import CHECKS_FILE, PAIRS_FILE
from veripo_jax.rl.pair_families import PAIR_FAMILIES, Encode, Member, group_pairs
from veripo_jax.rl.pairs import Pair, write_pairs
from veripo_jax.rl.answers import parse_response, rule_consistent, words
from veripo_jax.rl.rewards import accuracy_reward
from veripo_jax.train.metrics import null_nonfinite

FAMILIES = ("consistency", "penalty", "accuracy", "reflection")   # the default order
CONSISTENT, INCONSISTENT, UNKNOWN = "consistent", "inconsistent", "unknown"

@dataclasses.dataclass(frozen=True)
class VerifierConfig:
  judge_prompt: str = JUDGE_PROMPT   # {reasoning} and {answer} are filled in
  judge_max_tokens: int = 8          # reply budget: one word and an end token
  max_reasoning_tokens: int = 4096   # length limit on r_i (the §1 response limit)
  repetition_ngram: int = 10
  short_text_words: int = 100        # reasoning with fewer words uses short_repetition_ngram
  short_repetition_ngram: int = 4
  repetition_threshold: float = 0.4  # repetitive if the ratio is above this
  correct_threshold: float = 0.5
  reflection_phrase: str = "Wait, let me check this again."
  max_pairs_per_prompt: int = 2
  # When the rule decides (fallback) and the reasoning states no answer at all, it does not
  # "conclude with exactly this final answer" (the judge's question): inconsistent. False leaves
  # such rollouts undecided (neither good nor a consistency rejection).
  undecided_is_inconsistent: bool = True
  # A reasoning whose conclusion the rule cannot read (`answers.stated_answer`) is inconsistent
  # whatever the judge replies: the judge then compares stated conclusions with the tag only.
  # For a small judge that reads a value mentioned mid-reasoning as the conclusion.
  conclusion_required: bool = False
  families: tuple[str, ...] = FAMILIES   # enabled families, in priority order
  seed: int = 0

  def __post_init__(self):
    unknown = sorted(set(self.families) - set(PAIR_FAMILIES))
    if unknown or len(set(self.families)) != len(self.families):
      raise ValueError(f"families {self.families}: each at most once, from the registered "
                       f"{sorted(PAIR_FAMILIES)} (rl.pair_families)")
    for field in ("{reasoning}", "{answer}"):
      if field not in self.judge_prompt:
        raise ValueError(f"judge_prompt lacks the {field} placeholder")
    if min(self.repetition_ngram, self.short_repetition_ngram, self.judge_max_tokens) < 1:
      raise ValueError("n-gram sizes and judge_max_tokens must be ≥ 1")
    if self.max_pairs_per_prompt < 0 or self.max_reasoning_tokens < 1:
      raise ValueError("max_pairs_per_prompt must be ≥ 0 and max_reasoning_tokens ≥ 1")


# --- repetition --------------------------------------------------------------------------------

def repetition_ratio(text: str, n: int) -> float:
  """Share of the word n-grams that repeat an earlier one: 1 − distinct / all (0 below n words).

  Words are case-folded `\\w+` runs. §4 words it "distinct n-grams seen more than once / all
  n-grams", which is at most 0.5 and falls as a loop goes on (one phrase looped m times scores
  about 1/m); this ratio rises to 1 − 1/m instead, so the 0.4 threshold flags loops.
  """
  folded = words(text)
  grams = [tuple(folded[i:i + n]) for i in range(len(folded) - n + 1)]
  return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def reasoning_repetition(text: str, cfg: VerifierConfig) -> float:
  short = len(words(text)) < cfg.short_text_words
  return repetition_ratio(text, cfg.short_repetition_ngram if short else cfg.repetition_ngram)


# --- the consistency rate ----------------------------------------------------------------------

def rule_inconsistency_rate(texts: Sequence[str]) -> float:
  """Share of the responses with a think and an answer whose reasoning does not conclude with
  the answer by the rule, a reasoning that states no answer included (NaN if none): the
  judge-free inconsistency measure of GRPO rounds and evaluations."""
  verdicts = [rule_consistent(p.think, p.answer)
              for p in map(parse_response, texts) if p.think and p.answer]
  return _rate(sum(v is not True for v in verdicts), len(verdicts))


# --- judges ------------------------------------------------------------------------------------

class Judge(Protocol):
  def verdicts(self, items: Sequence[tuple[str, str]]) -> list[str | None]:
    """Raw replies for (reasoning, answer) items, in order; None = failure or timeout."""


class GenerationClient(Protocol):
  def generate_many(self, prompts: Sequence[Sequence[int]],
                    max_tokens: int) -> list[list[int] | None]: ...


_LEADING_THINK = re.compile(r"\s*<think>.*?</think>", re.S)


def parse_verdict(reply: str | None) -> str:
  """First word of the reply (a reasoning judge's leading `<think>…</think>` dropped),
  case-folded, punctuation stripped: yes → consistent, no → inconsistent, else unknown."""
  if reply is None:
    return UNKNOWN
  tokens = _LEADING_THINK.sub("", reply, count=1).split()
  word = re.sub(r"^\W+|\W+$", "", tokens[0]).casefold() if tokens else ""
  return {"yes": CONSISTENT, "no": INCONSISTENT}.get(word, UNKNOWN)


class RuleJudge:
  """No judge model: every verdict is unknown, so every judged rollout uses the rule (and the
  metrics show it: fallbacks = judged rollouts, judge agreement undefined)."""

  def verdicts(self, items: Sequence[tuple[str, str]]) -> list[str | None]:
    return [None] * len(items)


class PromptJudge:
  """A small LLM behind a generation client (`generate_many(prompt_ids, max_tokens)`, e.g.
  veripo_jax.serving.client): the prompt is rendered in the tokenizer's chat template when it has
  one (a user turn plus the generation prompt), otherwise encoded as plain text."""

  def __init__(self, client: GenerationClient, tokenizer, prompt: str = JUDGE_PROMPT,
               max_tokens: int = 8):
    self.client = client
    self.tokenizer = tokenizer
    self.prompt = prompt
    self.max_tokens = max_tokens

  def prompt_ids(self, reasoning: str, answer: str) -> list[int]:
    return self.encode_prompt(render_judge_prompt(self.prompt, reasoning, answer))

  def encode_prompt(self, text: str) -> list[int]:
    if not getattr(self.tokenizer, "chat_template", None):
      return list(self.tokenizer.encode(text))
    text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                              tokenize=False, add_generation_prompt=True)
    return list(self.tokenizer.encode(text, add_special_tokens=False))

  def verdicts(self, items: Sequence[tuple[str, str]]) -> list[str | None]:
    return self.ask([render_judge_prompt(self.prompt, r, a) for r, a in items])

  def ask(self, prompts: Sequence[str]) -> list[str | None]:
    """Raw replies to already rendered judge prompts (None = failure or timeout)."""
    if not prompts:
      return []
    outs = self.client.generate_many([self.encode_prompt(t) for t in prompts], self.max_tokens)
    return [None if ids is None else self.tokenizer.decode(list(ids), skip_special_tokens=True)
            for ids in outs]


# --- checks ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RolloutCheck:
  prompt_id: str
  source_index: int
  sample: int
  accuracy: float
  correct: bool
  well_formed: bool
  reasoning_tokens: int
  truncated: bool
  repetition: float
  repetitive: bool
  judged: bool                    # had a non-empty think and answer, so the judge was asked
  judge_reply: str | None         # the raw reply (None: not judged, or the judge failed)
  verdict: str                    # the judge's: consistent | inconsistent | unknown
  rule_consistent: bool | None    # the rule's, on every judged rollout (None: undecided)
  consistent: bool | None         # the judge's, else the rule's (fallback); None: undecided
  fallback: bool
  good: bool

  @property
  def clean(self) -> bool:
    return self.well_formed and not self.repetitive and not self.truncated


_REQUIRED = ("prompt_id", "source_index", "sample", "tokens", "truncated", "text", "answer",
             "problem_type")


def _reasoning(text: str, think: str | None) -> str:
  """r_i: the think text; without a complete pair, what follows the last `<think>` up to
  `<answer>` (a truncated response's unfinished reasoning)."""
  if think is not None:
    return think
  text = text.rsplit("<think>", 1)[-1]
  return text.split("<answer>", 1)[0].strip()


def _checked_records(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
  out = []
  for i, record in enumerate(records):
    if "tokens" in record and len(record["tokens"]) == 0:
      continue
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
      raise ValueError(f"rollout record {i} lacks {missing} (see the verifier's input contract)")
    out.append(record)
  return out


# --- the verifier ------------------------------------------------------------------------------

@dataclasses.dataclass
class VerifierResult:
  pairs: list[Pair]
  checks: list[RolloutCheck]
  metrics: dict[str, float]


def _rate(count: int, total: int) -> float:
  return count / total if total else math.nan


def verify(records: Sequence[Mapping[str, Any]], judge: Judge, cfg: VerifierConfig,
           encode: Encode, eos_id: int) -> VerifierResult:
  """Checks every rollout, asks the judge once for all judged ones, builds each prompt's pairs.

  `encode(text) -> token ids` must add no special tokens (for a Hugging Face tokenizer:
  `lambda t: tok.encode(t, add_special_tokens=False)`); `eos_id` ends reflection responses as
  the sampler's EOS ends the stored ones. Deterministic for given records, replies and seed.
  """
  records = _checked_records(records)
  parsed = [parse_response(r["text"]) for r in records]
  judged = [bool(p.think) and bool(p.answer) for p in parsed]
  items = [(p.think, p.answer) for p, j in zip(parsed, judged) if j]
  replies = list(judge.verdicts(items))
  if len(replies) != len(items):
    raise ValueError(f"judge answered {len(replies)} of {len(items)} items")
  reply_iter = iter(replies)

  members = []
  for record, p, is_judged in zip(records, parsed, judged):
    reasoning = _reasoning(record["text"], p.think)
    accuracy = accuracy_reward(record["text"], record["answer"], record["problem_type"],
                               options=record.get("options"))
    reply = next(reply_iter) if is_judged else None
    verdict = parse_verdict(reply) if is_judged else UNKNOWN
    rule = rule_consistent(p.think, p.answer, record.get("options")) if is_judged else None
    fallback = is_judged and verdict == UNKNOWN
    consistent = rule if fallback else (None if verdict == UNKNOWN else verdict == CONSISTENT)
    if rule is None and is_judged and (cfg.conclusion_required or
                                       (fallback and cfg.undecided_is_inconsistent)):
      consistent = False
    repetition = reasoning_repetition(reasoning, cfg)
    correct = accuracy >= cfg.correct_threshold
    repetitive = repetition > cfg.repetition_threshold
    truncated = bool(record["truncated"])
    check = RolloutCheck(
        prompt_id=str(record["prompt_id"]), source_index=int(record["source_index"]),
        sample=int(record["sample"]), accuracy=accuracy, correct=correct,
        well_formed=p.well_formed, reasoning_tokens=len(encode(reasoning)) if reasoning else 0,
        truncated=truncated, repetition=repetition, repetitive=repetitive, judged=is_judged,
        judge_reply=reply, verdict=verdict, rule_consistent=rule, consistent=consistent,
        fallback=fallback,
        good=p.well_formed and correct and consistent is True and not repetitive
        and not truncated)
    members.append(Member(record, check, p.think, p.answer))

  groups: dict[str, list[Member]] = collections.defaultdict(list)
  for m in members:
    groups[m.check.prompt_id].append(m)
  for prompt_id, group in groups.items():
    if len({m.check.source_index for m in group}) > 1:
      raise ValueError(f"prompt {prompt_id!r} has records with different source_index")
  pairs = [p for group in groups.values() for p in group_pairs(group, cfg, encode, eos_id)]
  checks = [m.check for m in members]
  return VerifierResult(pairs, checks, _metrics(checks, groups, pairs, cfg))


def _metrics(checks: list[RolloutCheck], groups: Mapping[str, list[Member]], pairs: list[Pair],
             cfg: VerifierConfig) -> dict[str, float]:
  """Counts and rates; a rate with nothing to count is NaN (written as null)."""
  n = len(checks)
  judged = [c for c in checks if c.judged]
  compared = [c for c in judged if c.verdict != UNKNOWN and c.rule_consistent is not None]
  family_counts = collections.Counter(p.family for p in pairs)
  metrics = {
      "verifier/rollouts": n,
      "verifier/prompts": len(groups),
      "verifier/prompts_without_good": sum(not any(m.check.good for m in g)
                                           for g in groups.values()),
      "verifier/judged": len(judged),
      "verifier/fallbacks": sum(c.fallback for c in checks),
      "verifier/undecided": sum(c.fallback and c.rule_consistent is None for c in judged),
      "verifier/inconsistency_rate": _rate(sum(c.consistent is False for c in judged),
                                           len(judged)),
      "verifier/judge_agreement": _rate(sum((c.verdict == CONSISTENT) == c.rule_consistent
                                            for c in compared), len(compared)),
      "verifier/correct_rate": _rate(sum(c.correct for c in checks), n),
      "verifier/good_rate": _rate(sum(c.good for c in checks), n),
      "verifier/repetitive_rate": _rate(sum(c.repetitive for c in checks), n),
      "verifier/truncated_rate": _rate(sum(c.truncated for c in checks), n),
  }
  metrics.update({f"verifier/pairs_{f}": family_counts[f] for f in cfg.families})
  metrics["verifier/pairs_total"] = len(pairs)
  return metrics


def write_verifier_outputs(directory: str, result: VerifierResult) -> None:
  """pairs.jsonl, checks.jsonl, then metrics.json (last: its presence marks a complete run),
  each written atomically."""
  write_pairs(os.path.join(directory, PAIRS_FILE), result.pairs)
  write_jsonl_atomic(os.path.join(directory, CHECKS_FILE),
                     [dataclasses.asdict(c) for c in result.checks])
  write_json_atomic(os.path.join(directory, "metrics.json"),
                    null_nonfinite(result.metrics))
