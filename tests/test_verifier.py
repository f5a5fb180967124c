"""The verifier (reference/veripo_method.md §4) on hand-built rollout groups: every check, the
judge stubbed at the client boundary, and the exact pairs and counts each rule implies."""

from __future__ import annotations

import json
import math
from decimal import Decimal

import pytest

from veripo_jax.rl import pair_families
from veripo_jax.rl.answers import rule_consistent, stated_answer
from veripo_jax.rl.pair_families import reflection_text
from veripo_jax.rl.pairs import read_pairs
from veripo_jax.rl.verifier import (JUDGE_PROMPT, PromptJudge, RuleJudge, VerifierConfig,
                                    parse_verdict, reasoning_repetition, render_judge_prompt,
                                    repetition_ratio, rule_inconsistency_rate, verify,
                                    write_verifier_outputs)

EOS, BOS = 1_000_000, 1_000_001
PHRASE = "Wait, let me check this again."


def encode(text: str) -> list[int]:
  return [ord(c) for c in text]


class CharTokenizer:
  """One token per character; EOS/BOS above the character range."""

  def __init__(self, chat_template: str | None = "fake"):
    self.chat_template = chat_template

  def encode(self, text, add_special_tokens=True):
    return [BOS] * add_special_tokens + encode(text)

  def decode(self, ids, skip_special_tokens=False):
    return "".join(chr(i) for i in ids if i < EOS or not skip_special_tokens)

  def apply_chat_template(self, messages, tokenize, add_generation_prompt):
    assert not tokenize and add_generation_prompt
    return "".join(f"<|user|>{m['content']}" for m in messages) + "<|assistant|>"


class FakeClient:
  """Replies by the reasoning found in the rendered prompt: canned text (as token ids + EOS)
  or None (a failed request)."""

  def __init__(self, tokenizer, replies):
    self.tokenizer, self.replies, self.calls = tokenizer, replies, []

  def generate_many(self, prompts, max_tokens):
    self.calls.append((len(prompts), max_tokens))
    out = []
    for ids in prompts:
      text = self.tokenizer.decode(ids)
      assert text.startswith("<|user|>") and text.endswith("<|assistant|>")
      reply = self.replies[text.split("Reasoning:\n", 1)[1].split("\nFinal answer:", 1)[0]]
      out.append(None if reply is None else encode(reply) + [EOS])
    return out


def R(think: str, answer: str) -> str:
  return f"<think>{think}</think><answer>{answer}</answer>"


LOOP = "The cube moves back. " * 12 + "So the answer is B."
# (prompt, source_index, gold, problem type, [(text, judge reply, truncated)]), sample = position.
GROUPS = [
    ("p1", 10, "B", "multiple choice", [
        (R("The red cube starts at the front. It rolls past the blue ball and stops at the back "
           "right corner. So the answer is B.", "B"), "Yes", False),        # good, longest
        (R("It ends at the back right. So the answer is B.", "B"), "yes.", False),  # good
        (R("The cube ends on the left side. So the answer is A.", "B"), "No", False),
        (R("The cube ends at the front. So the answer is C.", "C"), "Yes", False),  # wrong
        (R(LOOP, "B"), "Yes", False),                                       # repetitive
        ("<think>The cube moves back and the ball moves", None, True),      # truncated
    ]),
    ("p2", 20, "A", "multiple choice", [                                  # all correct
        (R("The ball is blue. So the answer is A.", "A"), "Yes", False),
        (R("The ball is blue and it is the only blue object in the scene. So the answer is A.",
           "A"), "Maybe", False),                                          # rule: consistent
        (R("The ball looks green. So the answer is C.", "A"), None, False),  # rule: not
        (R("The blue ball is the one. So the answer is A.", "A") + " Done.", "Yes", False),
    ]),
    ("p3", 30, "C", "multiple choice", [                                  # no good rollout
        (R("The cube is yellow. So the answer is D.", "D"), "Yes", False),
        (R("The cube is red. So the answer is C.", "C"), "No", False),
    ]),
    ("p4", 40, "3", "numerical", [
        (R("I count the cubes one by one. So there are 3.", "3"), None, False),
        (R("I count the cubes twice. So there are 4.", "4"), "No", False),
    ]),
]


def build(groups=GROUPS):
  records, replies = [], {}
  for pid, src, gold, kind, rollouts in groups:
    for sample, (text, reply, truncated) in enumerate(rollouts):
      records.append({"prompt_id": pid, "prompt_row": 0, "sample": sample, "source_index": src,
                      "truncated": truncated, "tokens": encode(text) + [EOS], "text": text,
                      "answer": gold, "problem_type": kind})
      if "</think>" in text:
        replies[text.split("<think>")[1].split("</think>")[0]] = reply
  return records, replies


def run(cfg=VerifierConfig(), groups=GROUPS, judge=None):
  records, replies = build(groups)
  tokenizer = CharTokenizer()
  client = FakeClient(tokenizer, replies)
  judge = judge or PromptJudge(client, tokenizer, cfg.judge_prompt, cfg.judge_max_tokens)
  return verify(records, judge, cfg, encode, EOS), client


def who(result):
  """Pairs as (prompt, family, chosen sample, rejected sample), samples found by text."""
  texts = {(pid, text): s for pid, _, _, _, rollouts in GROUPS
           for s, (text, _, _) in enumerate(rollouts)}
  return [(p.prompt_id, p.family, texts.get((p.prompt_id, p.chosen_text), "reflection"),
           texts[(p.prompt_id, p.rejected_text)]) for p in result.pairs]


def test_pairs_checks_and_metrics():
  records, _ = build()
  padding = {"prompt_id": "", "sample": 0, "tokens": [], "text": ""}   # skipped, unchecked
  tokenizer = CharTokenizer()
  client = FakeClient(tokenizer, build()[1])
  result = verify(records + [padding], PromptJudge(client, tokenizer), VerifierConfig(), encode,
                  EOS)
  assert client.calls == [(13, 8)]                 # one request; the truncated one not judged
  assert who(result) == [("p1", "consistency", 0, 2), ("p1", "penalty", 0, 4),
                         ("p2", "consistency", 1, 2), ("p2", "penalty", 1, 3),
                         ("p4", "consistency", 0, 1)]
  pair = result.pairs[0]
  assert (pair.source_index, pair.chosen_tokens, pair.rejected_tokens) == (
      10, tuple(records[0]["tokens"]), tuple(records[2]["tokens"]))

  c = {(x.prompt_id, x.sample): x for x in result.checks}
  assert [c["p1", s].good for s in range(6)] == [True, True, False, False, False, False]
  assert c["p1", 4].repetitive and c["p1", 4].correct and c["p1", 4].consistent
  assert c["p1", 5].truncated and not c["p1", 5].judged and c["p1", 5].verdict == "unknown"
  assert c["p1", 5].consistent is None and c["p1", 5].accuracy == 0.0
  assert c["p1", 0].reasoning_tokens == len(GROUPS[0][4][0][0].split("<think>")[1]
                                            .split("</think>")[0])
  assert (c["p2", 1].verdict, c["p2", 1].fallback, c["p2", 1].consistent) == (
      "unknown", True, True)
  assert (c["p2", 2].judge_reply, c["p2", 2].fallback, c["p2", 2].consistent) == (
      None, True, False)
  assert not c["p2", 3].well_formed and c["p2", 3].correct
  assert (c["p3", 1].verdict, c["p3", 1].rule_consistent, c["p3", 1].good) == (
      "inconsistent", True, False)
  assert (c["p4", 0].fallback, c["p4", 0].good) == (True, True)

  m = result.metrics
  assert {k: m[f"verifier/{k}"] for k in (
      "rollouts", "prompts", "prompts_without_good", "judged", "fallbacks", "undecided",
      "pairs_consistency", "pairs_penalty", "pairs_accuracy", "pairs_reflection",
      "pairs_total")} == {
      "rollouts": 14, "prompts": 4, "prompts_without_good": 1, "judged": 13, "fallbacks": 3,
      "undecided": 0, "pairs_consistency": 3, "pairs_penalty": 2, "pairs_accuracy": 0,
      "pairs_reflection": 0, "pairs_total": 5}
  # Judge and rule both decided on 10; they differ on p3/1 and p4/1.
  assert m["verifier/judge_agreement"] == pytest.approx(8 / 10)
  assert m["verifier/inconsistency_rate"] == pytest.approx(4 / 13)
  assert m["verifier/good_rate"] == pytest.approx(5 / 14)
  assert m["verifier/correct_rate"] == pytest.approx(10 / 14)
  assert m["verifier/repetitive_rate"] == pytest.approx(1 / 14)
  assert m["verifier/truncated_rate"] == pytest.approx(1 / 14)

  shuffled, _ = build()
  again = verify(shuffled[::-1], PromptJudge(client, tokenizer), VerifierConfig(), encode, EOS)
  assert sorted(again.pairs, key=lambda p: p.prompt_id) == result.pairs


def test_families_take_turns_and_rejected_used_once():
  result, _ = run(VerifierConfig(max_pairs_per_prompt=10), GROUPS[:2])
  assert who(result) == [("p1", "consistency", 0, 2), ("p1", "penalty", 0, 4),
                         ("p1", "accuracy", 0, 3), ("p1", "penalty", 0, 5),
                         ("p2", "consistency", 1, 2), ("p2", "penalty", 1, 3)]


@pytest.fixture
def shortest_rejected():
  """A family registered from outside the package: every other rollout, shortest text first."""
  pair_families.register_pair_family(
      "shortest_rejected", lambda best, members, cfg: sorted(
          (i for i, m in enumerate(members) if m is not best),
          key=lambda i: len(members[i].record["text"])))
  yield
  del pair_families.PAIR_FAMILIES["shortest_rejected"]


def test_a_registered_family_takes_its_turn(shortest_rejected):
  """A new family is one registration; the config then names it like a built-in one."""
  with pytest.raises(ValueError, match="already registered"):
    pair_families.register_pair_family("shortest_rejected", lambda *a: [])
  result, _ = run(VerifierConfig(families=("shortest_rejected", "consistency"),
                                 max_pairs_per_prompt=3), GROUPS[:1])
  # p1: shortest first is the truncated sample 5, then sample 1; consistency rejects sample 2.
  assert who(result) == [("p1", "shortest_rejected", 0, 5), ("p1", "consistency", 0, 2),
                         ("p1", "shortest_rejected", 0, 1)]
  with pytest.raises(ValueError, match="from the registered"):
    VerifierConfig(families=("consistency", "unregistered"))


def test_reflection_pair_text_and_tokens():
  result, _ = run(VerifierConfig(families=("reflection", "accuracy"), max_pairs_per_prompt=10),
                  GROUPS[:1])
  assert who(result) == [("p1", "reflection", "reflection", 3), ("p1", "accuracy", 0, 5)]
  pair = result.pairs[0]
  expected = ("<think>The cube ends at the front. So the answer is C. Wait, let me check this "
              "again. The red cube starts at the front. It rolls past the blue ball and stops at "
              "the back right corner. So the answer is B.</think><answer>B</answer>")
  assert pair.chosen_text == expected
  assert reflection_text("The cube ends at the front. So the answer is C.", PHRASE,
                         "The red cube starts at the front. It rolls past the blue ball and "
                         "stops at the back right corner. So the answer is B.", "B") == expected
  assert pair.chosen_tokens == (*encode(expected), EOS)
  assert pair.rejected_tokens == (*encode(GROUPS[0][4][3][0]), EOS)
  # DPO's NLL term imitates the correction only: from the token after the phrase.
  correction = pair.chosen_tokens[pair.chosen_nll_from:]
  assert correction == (*encode(expected[expected.index(PHRASE) + len(PHRASE):]), EOS)
  assert result.pairs[1].chosen_nll_from == 0


def test_conclusion_required_overrules_the_judges_yes_on_reasoning_without_a_conclusion():
  group = ("q", 60, "B", "multiple choice", [
      (R("The cube starts at the front and rolls to the back. So the answer is B.", "B"), "Yes",
       False),
      (R("The cube starts at the front, option B. So the cubes as they roll.", "B"), "Yes",
       False),                                           # no conclusion the rule reads
      (R("The cube rolls. So the answer is B.", "B"), "Yes", False)])
  for required, good, pairs in ((False, [True, True, True], []),
                                (True, [True, False, True], [("consistency", 0, 1)])):
    result, _ = run(VerifierConfig(conclusion_required=required), [group])
    assert [c.good for c in result.checks] == good
    assert [c.consistent for c in result.checks] == [True, not required, True]
    texts = [text for text, _, _ in group[4]]
    assert [(p.family, texts.index(p.chosen_text), texts.index(p.rejected_text))
            for p in result.pairs] == pairs


def test_length_limit():
  long, short = (len(GROUPS[0][4][i][0].split("</think>")[0]) - len("<think>") for i in (0, 1))
  # The longest good is over the limit: the longest under it is chosen.
  result, _ = run(VerifierConfig(max_reasoning_tokens=short + 1), GROUPS[:1])
  assert who(result)[0] == ("p1", "consistency", 1, 2)
  # Room for r_good but not for r_wrong + phrase + r_good: no reflection pair.
  result, _ = run(VerifierConfig(families=("reflection", "accuracy"), max_pairs_per_prompt=10,
                                 max_reasoning_tokens=long + 5), GROUPS[:1])
  assert who(result) == [("p1", "accuracy", 0, 3), ("p1", "accuracy", 0, 5)]


def test_seeded_tie_break():
  group = ("t", 50, "B", "multiple choice", [
      (R("The ball goes up. So the answer is B.", "B"), "Yes", False),
      (R("The ball goes on. So the answer is B.", "B"), "Yes", False),   # same length
      (R("The ball goes down. So the answer is A.", "A"), "Yes", False)])
  chosen = set()
  for seed in range(12):
    first, _ = run(VerifierConfig(seed=seed), [group])
    second, _ = run(VerifierConfig(seed=seed), [group])
    assert first.pairs == second.pairs and len(first.pairs) == 1
    chosen.add(first.pairs[0].chosen_text)
  assert chosen == {group[4][0][0], group[4][1][0]}


def test_rule_judge_and_outputs(tmp_path):
  result, client = run(judge=RuleJudge())
  assert client.calls == []
  m = result.metrics
  assert (m["verifier/fallbacks"], m["verifier/judged"]) == (13, 13)
  assert math.isnan(m["verifier/judge_agreement"])
  # Without the judge's "No", p3/1 and p4/1 read as consistent: each gives an accuracy pair.
  assert who(result) == [("p1", "consistency", 0, 2), ("p1", "penalty", 0, 4),
                         ("p2", "consistency", 1, 2), ("p2", "penalty", 1, 3),
                         ("p3", "accuracy", 1, 0), ("p4", "accuracy", 0, 1)]
  write_verifier_outputs(str(tmp_path / "out"), result)
  assert read_pairs(str(tmp_path / "out" / "pairs.jsonl")) == result.pairs
  lines = (tmp_path / "out" / "checks.jsonl").read_text().splitlines()
  assert len(lines) == 14 and json.loads(lines[2])["consistent"] is False
  metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
  assert metrics["verifier/judge_agreement"] is None and metrics["verifier/pairs_total"] == 6


def test_prompt_judge_rendering():
  reasoning, answer = "Sets like {answer} stay {reasoning}.", "B"
  text = render_judge_prompt(JUDGE_PROMPT, reasoning, answer)
  assert text == JUDGE_PROMPT.replace("{reasoning}", reasoning, 1).replace(
      "Final answer: {answer}", "Final answer: B")
  plain = PromptJudge(None, CharTokenizer(chat_template=None))
  assert plain.prompt_ids(reasoning, answer) == [BOS, *encode(text)]
  chat = PromptJudge(None, CharTokenizer())
  assert chat.prompt_ids(reasoning, answer) == encode(f"<|user|>{text}<|assistant|>")
  assert chat.verdicts([]) == []


@pytest.mark.parametrize("reply, verdict", [
    ("Yes", "consistent"), ("yes.", "consistent"), ("**No**", "inconsistent"),
    ("  No, the reasoning says A.", "inconsistent"), ("<think>hmm</think> Yes", "consistent"),
    ("Maybe", "unknown"), ("Yesterday", "unknown"), ("Yes/No", "unknown"), ("", "unknown"),
    (None, "unknown")])
def test_parse_verdict(reply, verdict):
  assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reasoning, kind, stated", [
    ("The cube moves right. So the answer is B.", "letter", "B"),
    ("The answer is A. Wait, let me check this again. The cube is red, so it must be C.",
     "letter", "C"),                                   # the last sentence stating one wins
    ("Option B is correct because the ball rolls.", "letter", "B"),
    ("Final answer: (D)", "letter", "D"),
    ("I compared all options.\nB", "letter", "B"),     # a bare final letter
    ("So I think the answer is not A, it's B.", "letter", "B"),  # cue phrase has no letter
    ("The answer is: Red cube.", "letter", "B"),       # option text -> its letter
    ("The answer is $B$. Let me describe the video once more.", "letter", "B"),
    ("I looked at the video carefully.", "letter", None),
    ("So I guess", "letter", None),                    # the pronoun is not option I
    ("Counting them gives 1, 2, 3. So there are 3 cubes.", "number", Decimal(3)),
    ("So the total is 1,200 meters.", "number", Decimal(1200)),
    ("The answer is \\boxed{3.5}", "number", Decimal("3.5")),
    ("There are 4 balls and 2 cubes. I count 7", "number", Decimal(7)),
    ("The ball hits the wall at frame 3. Then it stops.", "number", None),
    ("The answer is New York.", "text", "new york"),
    ("So it is New York.", "text", None),              # text needs an explicit cue
])
def test_stated_answer(reasoning, kind, stated):
  assert stated_answer(reasoning, kind, ["A. Blue ball", "B. Red cube"]) == stated


@pytest.mark.parametrize("reasoning, answer, consistent", [
    ("So the answer is B.", "$B$", True), ("So the answer is B.", "B. back-right", True),
    ("So the answer is A.", "B", False), ("So there are 3.0 cubes.", "3", True),
    ("So there are 4 cubes.", "3", False), ("The answer is new york.", "New York", True),
    ("I looked at the video.", "B", None), ("So the answer is B.", "", None)])
def test_rule_consistent(reasoning, answer, consistent):
  assert rule_consistent(reasoning, answer) is consistent


def test_repetition_ratio_by_hand():
  # 3-grams abc bca cab abc bca cab abc bcx: 8 in all, 4 distinct.
  assert repetition_ratio("a b c a b c a b c x", 3) == 0.5
  assert repetition_ratio("The cube. the CUBE", 2) == pytest.approx(1 / 3)  # case, punctuation
  assert repetition_ratio("too short", 3) == 0.0
  cfg = VerifierConfig()
  # 9 words < short_text_words: n = 4; 4-grams 1234 2341 3412 4123 1234 2345, 5 distinct.
  assert reasoning_repetition("one two three four one two three four five", cfg) == (
      pytest.approx(1 / 6))
  # 120 words: n = 10; w0..w9 repeated once at the end: 111 10-grams, 110 distinct.
  words = [f"w{i}" for i in range(110)] + [f"w{i}" for i in range(10)]
  assert reasoning_repetition(" ".join(words), cfg) == pytest.approx(1 / 111)
  assert reasoning_repetition(LOOP, cfg) > cfg.repetition_threshold


def test_config_and_input_errors():
  with pytest.raises(ValueError, match="families"):
    VerifierConfig(families=("consistency", "bogus"))
  with pytest.raises(ValueError, match="placeholder"):
    VerifierConfig(judge_prompt="Reasoning: {reasoning}")
  records, _ = build(GROUPS[:1])
  del records[0]["source_index"]
  with pytest.raises(ValueError, match="source_index"):
    verify(records, RuleJudge(), VerifierConfig(), encode, EOS)


def test_reasoning_without_a_stated_answer_is_inconsistent_by_default():
  texts = [R("The ball moves left. So the answer is B.", "B"),
           R("Let me look at the ball.", "B")]           # correct, but concludes nothing
  records = [{"prompt_id": "p", "source_index": 0, "sample": i, "tokens": encode(t) + [EOS],
              "truncated": False, "text": t, "answer": "B", "problem_type": "multiple choice"}
             for i, t in enumerate(texts)]
  strict = verify(records, RuleJudge(), VerifierConfig(), encode, EOS)
  assert [c.consistent for c in strict.checks] == [True, False]
  assert [(p.family, p.rejected_text) for p in strict.pairs] == [("consistency", texts[1])]
  lenient = verify(records, RuleJudge(),
                   VerifierConfig(undecided_is_inconsistent=False), encode, EOS)
  assert [c.consistent for c in lenient.checks] == [True, None] and lenient.pairs == []
  for result in (strict, lenient):
    assert result.metrics["verifier/undecided"] == 1
  assert strict.metrics["verifier/inconsistency_rate"] == 0.5
  assert rule_inconsistency_rate(texts + ["no tags", R("So the answer is C.", "B")]) == 2 / 3
