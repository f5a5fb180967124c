"""The verifier stage's parts: judge training data, easy-prompt discard, dataset exclusion, and
`verify` through a real JetStream judge server, also when the server stops midway."""

from __future__ import annotations

import json
import re
import types

import jax
import numpy as np
import portpicker
import pytest
from flax import nnx

from veripo_jax.data.loader import IndexedSubset
from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.synthetic.judge import make_judge_example, restate
from veripo_jax.data.synthetic.world import WorldConfig, make_example
from veripo_jax.data.tokenization import load_tokenizer
from veripo_jax.inference import generate
from veripo_jax.models.qwen2_5_vl import (Qwen25VL, fit_to_tokenizer, get_preset,
                                          save_hf_checkpoint)
from veripo_jax.rl.answers import parse_response, rule_consistent
from veripo_jax.rl.rollout import read_rollout_records
from veripo_jax.rl.verifier import PromptJudge, VerifierConfig, parse_verdict, verify
from veripo_jax.rl.verifier_stage import (JudgeConfig, choose_discarded, easy_prompts,
                                          heldout_agreement, serve_judge)
from veripo_jax.serving.client import JudgeClient
from veripo_jax.serving.server import start_server

WORLD = WorldConfig(tokenizer_corpus_examples=200)   # vocabulary 1024: "Yes" and "No" are tokens
_PARTS = re.compile(r"Reasoning:\n(.*)\nFinal answer: (.*)\nDoes", re.S)


# --- judge training data ---------------------------------------------------------------------

def test_judge_examples_are_labelled_by_consistency():
  records = [make_judge_example(WORLD, 0, "judge_train", i) for i in range(400)]
  labels = np.array([r["answer"] == "Yes" for r in records])
  assert 0.3 < labels.mean() < 0.5                 # half of the 80% that conclude something
  concluding = []
  for r, label in zip(records, labels):
    reasoning, answer = _PARTS.search(r["problem"]).groups()
    rule = rule_consistent(reasoning, answer)
    assert (rule is True) == label                  # an independent reading agrees
    stated, told, mark = re.fullmatch(
        r"The reasoning concludes (?:(\S+) Yes|nothing)\. The final answer is (\S+) (Yes|No)\.",
        r["reasoning"]).groups()
    assert told == answer and mark == r["answer"]
    assert (stated is None) == (rule is None)       # "nothing" exactly when the rule finds none
    if stated is not None:
      assert (stated == answer) == label
    concluding.append(stated is not None)
  assert 0.7 < np.mean(concluding) < 0.9
  assert make_judge_example(WORLD, 0, "judge_train", 7) == records[7]
  assert all(make_judge_example(WORLD, 0, "judge_train", i, no_conclusion_share=0.0)["reasoning"]
             .split()[3] != "nothing." for i in range(50))
  # The label is about consistency, not correctness: both labels occur with right and wrong
  # conclusions.
  right = np.array([r["reasoning"].split()[3] == make_example(
      WORLD, 0, "judge_train/question", i)[0]["answer"] for i, r in enumerate(records)])
  pairs = {(bool(a), bool(b)) for a, b, c in zip(right, labels, concluding) if c}
  assert pairs == {(True, True), (True, False), (False, True), (False, False)}


def test_restate_replaces_only_the_conclusion():
  text = "At frame 3 a red circle appears (3 so far). So there are 3."
  assert restate(text, "3", "5") == "At frame 3 a red circle appears (3 so far). So there are 5."
  assert restate("The option 'left' is B.", "B", "D") == "The option 'left' is D."
  with pytest.raises(ValueError, match="never states"):
    restate("no numbers here", "4", "5")


# --- easy prompts and exclusion --------------------------------------------------------------

def _record(source, rnd, sample, accuracy, tokens=(5, 6)):
  return {"prompt_id": f"train-{source}", "source_index": source, "round": rnd,
          "sample": sample, "tokens": list(tokens), "rewards": {"accuracy": accuracy}}


def test_easy_prompts_use_each_prompts_latest_group():
  records = [
      *(_record(1, 0, s, 1.0) for s in range(4)),                # easy
      *(_record(2, 0, s, 1.0 if s else 0.0) for s in range(4)),  # one wrong: not easy
      *(_record(3, 0, s, 0.0) for s in range(4)),                # hard in round 0 ...
      *(_record(3, 2, s, 1.0) for s in range(4)),                # ... all right in round 2
      *(_record(4, 1, s, 1.0) for s in range(4)),                # right in round 1 ...
      *(_record(4, 3, s, 0.5) for s in range(4)),                # ... partly wrong later
      _record(5, 0, 0, 0.0, tokens=()),                           # padding row: ignored
  ]
  assert easy_prompts(records) == [1, 3]
  with pytest.raises(ValueError, match="no accuracy reward"):
    easy_prompts([{**_record(1, 0, 0, 1.0), "rewards": {"format": 1.0}}])


def test_discard_is_seeded_and_sized():
  easy = list(range(100, 150))
  picked = choose_discarded(easy, 0.8, seed=3)
  assert len(picked) == 40 and set(picked) <= set(easy) and picked == sorted(picked)
  assert choose_discarded(easy[::-1], 0.8, seed=3) == picked      # order of input irrelevant
  assert choose_discarded(easy, 0.8, seed=4) != picked
  assert choose_discarded(easy, 0.0, seed=3) == [] and choose_discarded([], 0.8, 0) == []


def test_indexed_subset_drops_excluded_rows_and_keeps_source_indices():
  source = [{"x": i * 10} for i in range(6)]
  subset = IndexedSubset(source, exclude=[4, 1])
  assert [subset[i] for i in range(len(subset))] == [
      {"x": 0, "source_index": 0}, {"x": 20, "source_index": 2}, {"x": 30, "source_index": 3},
      {"x": 50, "source_index": 5}]
  with pytest.raises(ValueError, match="outside"):
    IndexedSubset(source, exclude=[6])


def test_read_rollout_records_tags_rounds_and_names_bad_lines(tmp_path):
  rollouts = tmp_path / "rollouts"
  rollouts.mkdir()
  for r in range(3):
    (rollouts / f"round_{r:05d}.jsonl").write_text(json.dumps({"prompt_id": f"p{r}"}) + "\n")
  assert [r["round"] for r in read_rollout_records(str(tmp_path))] == [0, 1, 2]
  assert [r["prompt_id"] for r in read_rollout_records(str(tmp_path), last_rounds=2)] == [
      "p1", "p2"]
  (rollouts / "round_00003.jsonl").write_text("{}\nnot json\n")
  with pytest.raises(ValueError, match=r"round_00003.jsonl:2"):
    read_rollout_records(str(tmp_path))
  with pytest.raises(FileNotFoundError):
    read_rollout_records(str(tmp_path / "missing"))


# --- a real judge server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  paths = build_world(tmp_path_factory.mktemp("world"), seed=0, split_sizes={"judge_x": 4},
                      world=WORLD)
  return load_tokenizer(paths.tokenizer_dir)


@pytest.fixture(scope="module")
def judge_model(tokenizer, tmp_path_factory):
  """A random tiny judge whose output layer only knows "Yes" and "No", pointed along how its
  final hidden states vary over the test's judge prompts: its one-token greedy replies are
  verdicts, and they differ between prompts."""
  base = get_preset("tiny")
  config = fit_to_tokenizer(base, tokenizer).replace(tie_word_embeddings=False)
  model = Qwen25VL(config, rngs=nnx.Rngs(0))
  d, vocab = model.lm_head.kernel.value.shape
  model.lm_head.kernel.value = jax.numpy.eye(d, vocab)       # logits[:d] = normed hidden state
  judge = PromptJudge(None, tokenizer)
  hidden = []
  for reasoning, answer in _items(_rollouts(tokenizer)):
    ids = np.array([judge.prompt_ids(reasoning, answer)], np.int32)
    hidden.append(np.asarray(model(ids, np.ones_like(ids)))[0, -1, :d])
  hidden = np.stack(hidden)
  direction = hidden[0] - hidden.mean(0)                    # item 0 leans Yes, some others No
  kernel = np.zeros((d, vocab), np.float32)
  for word, sign in (("Yes", 1.0), ("No", -1.0)):
    (token,) = tokenizer.encode(word, add_special_tokens=False)
    kernel[:, token] = sign * direction
  model.lm_head.kernel.value = jax.numpy.asarray(kernel)
  path = tmp_path_factory.mktemp("judge") / "ckpt"
  save_hf_checkpoint(model, path)
  return model, str(path)


def _rollouts(tokenizer):
  """Two groups over several answers; the judge sees each (reasoning, answer)."""
  texts = [
      ("<think>The option 'left' is B.</think><answer>B</answer>", "B"),
      ("<think>The option 'left' is B.</think><answer>C</answer>", "B"),
      ("<think>So there are 4.</think><answer>4</answer>", "B"),
      ("<think>Hmm, the red circle first, which is option A.</think><answer>A</answer>", "B"),
      ("<think>So there are 3.</think><answer>3</answer>", "3"),
      ("<think>So there are 3.</think><answer>5</answer>", "3"),
      ("<think>So there are 2.</think><answer>2</answer>", "3"),
      ("no tags at all", "3"),
  ]
  records = []
  for i, (text, gold) in enumerate(texts):
    group = i // 4
    records.append({
        "prompt_id": f"train-{group}", "source_index": group, "sample": i % 4,
        "tokens": tokenizer.encode(text, add_special_tokens=False) + [2], "truncated": False,
        "text": text, "answer": gold,
        "problem_type": "multiple choice" if group == 0 else "numerical"})
  return records


def _greedy_replies(model, tokenizer, judge, items, max_tokens):
  """What the served judge must answer: `generate` on each rendered prompt, decoded."""
  out = []
  for reasoning, answer in items:
    ids = np.array([judge.prompt_ids(reasoning, answer)], np.int32)
    gen = generate(model, {"input_ids": ids, "attention_mask": np.ones_like(ids)}, max_tokens,
                   temperature=0.0, eos_token_ids=(model.config.eos_token_id,),
                   pad_token_id=model.config.pad_token_id)
    n = int(gen.lengths[0])
    out.append(tokenizer.decode(np.asarray(gen.tokens)[0, :n].tolist(),
                                skip_special_tokens=True))
  return out


class CannedJudge:
  def __init__(self, replies):
    self.replies = replies

  def verdicts(self, items):
    assert len(items) == len(self.replies)
    return list(self.replies)


@pytest.fixture(scope="module")
def served(judge_model):
  server = start_server(judge_model[1], portpicker.pick_unused_port(),
                        max_concurrent_decodes=4, max_prefill_length=256, max_decode_length=8)
  yield server
  server.stop()


def _items(records):
  parsed = [parse_response(r["text"]) for r in records]
  return [(p.think, p.answer) for p in parsed if p.think and p.answer]


def test_verify_through_a_real_judge_server(tokenizer, judge_model, served):
  model, _ = judge_model
  records = _rollouts(tokenizer)
  cfg = VerifierConfig(judge_max_tokens=1, max_reasoning_tokens=64)
  encode = lambda t: tokenizer.encode(t, add_special_tokens=False)
  with JudgeClient(served.address, timeout_s=60, retries=1, max_workers=4) as client:
    judge = PromptJudge(client, tokenizer, cfg.judge_prompt, cfg.judge_max_tokens)
    result = verify(records, judge, cfg, encode, eos_id=2)
    assert client.num_failures == 0
  items = _items(records)
  want = _greedy_replies(model, tokenizer, judge, items, cfg.judge_max_tokens)
  verdicts = {parse_verdict(w) for w in want}
  assert verdicts == {"consistent", "inconsistent"}       # the judge really decides
  judged = [c for c in result.checks if c.judged]
  assert [c.judge_reply for c in judged] == want
  assert [c.verdict for c in judged] == [parse_verdict(w) for w in want]
  stubbed = verify(records, CannedJudge(want), cfg, encode, eos_id=2)
  assert result.pairs == stubbed.pairs
  np.testing.assert_equal(result.metrics, stubbed.metrics)
  assert result.metrics["verifier/fallbacks"] == 0
  # The stage's way to an external judge: `judge.address` (host:port) of a running server.
  ctx = types.SimpleNamespace(tokenizer=tokenizer)
  with serve_judge(ctx, JudgeConfig(from_stage="", address=served.address), cfg.judge_prompt,
                   cfg.judge_max_tokens) as external:
    by_address = verify(records, external, cfg, encode, eos_id=2)
  assert [c.judge_reply for c in by_address.checks if c.judged] == want
  assert by_address.pairs == result.pairs


class StopsServerAfter(JudgeClient):
  """A client whose server goes down after `n` answered requests (one worker: in order)."""

  def __init__(self, server, n, **kw):
    super().__init__(server.address, **kw)
    self.server, self.n, self.answered = server, n, 0

  def generate_ids(self, prompt_ids, max_tokens):
    if self.answered == self.n:
      self.server.stop()
    self.answered += 1
    return super().generate_ids(prompt_ids, max_tokens)


def test_server_stopped_mid_verification_falls_back_and_still_pairs(tokenizer, judge_model):
  model, path = judge_model
  server = start_server(path, portpicker.pick_unused_port(), max_concurrent_decodes=4,
                        max_prefill_length=256, max_decode_length=8)
  records = _rollouts(tokenizer)
  cfg = VerifierConfig(judge_max_tokens=1, max_reasoning_tokens=64)
  encode = lambda t: tokenizer.encode(t, add_special_tokens=False)
  items = _items(records)
  try:
    with StopsServerAfter(server, 3, timeout_s=5, retries=1, max_workers=1,
                          backoff_s=0.05) as client:
      judge = PromptJudge(client, tokenizer, cfg.judge_prompt, cfg.judge_max_tokens)
      result = verify(records, judge, cfg, encode, eos_id=2)
      assert client.num_failures == len(items) - 3
  finally:
    server.stop()
  want = _greedy_replies(model, tokenizer, judge, items[:3], cfg.judge_max_tokens)
  judged = [c for c in result.checks if c.judged]
  assert [c.judge_reply for c in judged] == want + [None] * (len(items) - 3)
  assert all(c.fallback and c.consistent == c.rule_consistent for c in judged[3:])
  stubbed = verify(records, CannedJudge(want + [None] * (len(items) - 3)), cfg, encode, 2)
  assert result.pairs == stubbed.pairs and result.pairs           # pairs are still built
  assert result.metrics["verifier/fallbacks"] == sum(c.fallback for c in judged) >= len(
      items) - 3


def test_heldout_agreement_counts_unknown_replies_as_wrong():
  class Replies:
    def __init__(self, replies):
      self.replies = replies

    def ask(self, prompts):
      return self.replies[:len(prompts)]

  records = [{"problem": b"p1", "answer": b"Yes"}, {"problem": "p2", "answer": "No"},
             {"problem": "p3", "answer": "No"}, {"problem": "p4", "answer": "Yes"}]
  got = heldout_agreement(Replies(["<think>x</think>Yes", "No", "Yes", "maybe"]), records)
  assert got == {"judge/heldout_agreement": 0.5, "judge/heldout_count": 4,
                 "judge/heldout_unknown": 1}
