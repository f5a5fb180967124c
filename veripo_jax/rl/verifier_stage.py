"""The verifier stage of the VerIPO loop: a GRPO stage's stored rollouts -> checks and pairs.

Between GRPO and DPO (reference/veripo_method.md §1, §4): read every stored round of the GRPO
stage `rollouts_from`, ask the judge about each rollout's consistency, and write `pairs.jsonl`,
`checks.jsonl` and `metrics.json` (see `verifier.write_verifier_outputs`) plus `discard.json`
into `WORKDIR/stages/<name>/`. A DPO stage names this stage in its `pairs` field; a later GRPO
stage names it in `discard_from` to drop the discarded easy prompts.

The judge is a Hugging Face checkpoint (another stage's exported policy, or a directory) served
here by JetStream on loopback for the stage's duration, or a server already running elsewhere,
or none (rules only). Judge failures (server down, timeouts) become rule verdicts, counted as
fallbacks; nothing the server does can stop the run. Process 0 does the work; every process
meets at the stage end. A re-run after a crash recomputes the stage (greedy judging, seeded
choices: the same outputs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Iterator, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from veripo_jax.data.datasets import data_source
from veripo_jax.data.loader import as_text
from veripo_jax.data.tokenization import load_tokenizer
from veripo_jax.rl.artifacts import PAIRS_FILE, write_discarded
from veripo_jax.rl.rollout import read_rollout_records
from veripo_jax.rl.stage import RunContext, Stage
from veripo_jax.rl.verifier import (UNKNOWN, Judge, PromptJudge, RuleJudge, VerifierConfig,
                                    parse_verdict, verify, write_verifier_outputs)
from veripo_jax.train.metrics import null_nonfinite



@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """Where the judge comes from: at most one of `from_stage`, `checkpoint`, `address`."""
  from_stage: str = ""        # a stage of this run whose exported policy is the judge
  checkpoint: str = ""        # or a local HF checkpoint (Qwen2/Qwen2.5 text, or Qwen2.5-VL)
  address: str = ""           # or a judge server already running (host:port)
  tokenizer_dir: str = ""     # "": the checkpoint's own tokenizer if it has one, else the run's
  dtype: str = "float32"
  max_concurrent_decodes: int = 8
  max_prefill_length: int = 1024   # power of two; longer prompts keep their last tokens
  max_decode_length: int = 64
  timeout_s: float = 30.0
  retries: int = 2
  max_workers: int = 8

  def __post_init__(self):
    given = [f for f in ("from_stage", "checkpoint", "address") if getattr(self, f)]
    if len(given) > 1:
      raise ValueError(f"judge: set at most one of from_stage, checkpoint, address; got {given}")


@dataclasses.dataclass(frozen=True)
class VerifierStageConfig:
  rollouts_from: str = "grpo"       # the GRPO stage whose stored rollouts are verified
  last_rounds: int = 0              # verify only the last k rounds (0: all)
  verifier: VerifierConfig = VerifierConfig()
  judge: JudgeConfig = JudgeConfig()
  # Labelled judge examples (problem = a rendered judge prompt, answer = Yes|No) on which the
  # judge's agreement with the ground truth is measured; "" skips the measurement.
  heldout_split: str = ""
  heldout_limit: int = 0            # 0: the whole split
  # A judge whose held-out agreement is below this is not trusted: the rules judge instead
  # (reported as judge/trusted = 0). 0 trusts any judge.
  min_heldout_agreement: float = 0.0
  discard_fraction: float = 0.8     # share of the easy (all-correct) prompts to drop next GRPO
  discard_seed: int = 0

  def __post_init__(self):
    if not 0.0 <= self.discard_fraction <= 1.0:
      raise ValueError(f"discard_fraction={self.discard_fraction} must be in [0, 1]")
    if self.last_rounds < 0 or self.heldout_limit < 0:
      raise ValueError("last_rounds and heldout_limit must be ≥ 0")


def easy_prompts(records: Sequence[Mapping]) -> list[int]:
  """Source indices whose most recent group had every rollout's accuracy reward at 1 (§1)."""
  groups: dict[int, dict[int, list[float]]] = {}
  for r in records:
    if not r.get("tokens"):
      continue
    if "accuracy" not in r["rewards"]:
      raise ValueError(f"rollout of {r['prompt_id']!r} has no accuracy reward (rewards: "
                       f"{sorted(r['rewards'])}); easy prompts are defined by it")
    by_round = groups.setdefault(int(r["source_index"]), {})
    by_round.setdefault(int(r["round"]), []).append(float(r["rewards"]["accuracy"]))
  return sorted(i for i, by_round in groups.items() if min(by_round[max(by_round)]) >= 1.0)


def choose_discarded(easy: Sequence[int], fraction: float, seed: int) -> list[int]:
  """round(fraction · |easy|) of the easy prompts, drawn with `seed`."""
  k = int(round(fraction * len(easy)))
  picked = np.random.default_rng(seed).choice(np.asarray(sorted(easy), np.int64), k,
                                              replace=False)
  return sorted(int(i) for i in picked)


def heldout_judge_metrics(ctx: RunContext, judge: PromptJudge, split: str,
                          limit: int = 0) -> dict[str, float]:
  """`heldout_agreement` on the first `limit` (0: all) examples of a labelled split."""
  heldout = data_source(ctx.dataset_dir, split)
  n = min(len(heldout), limit or len(heldout))
  return heldout_agreement(judge, [heldout[i] for i in range(n)])


def heldout_agreement(judge: PromptJudge, records: Sequence[Mapping]) -> dict[str, float]:
  """The judge's agreement with labelled examples (a label is read as a reply: `Yes`/`No`); an
  unparseable reply counts as wrong."""
  replies = judge.ask([as_text(r["problem"]) for r in records])
  verdicts = [parse_verdict(reply) for reply in replies]
  right = [v != UNKNOWN and v == parse_verdict(as_text(r["answer"]))
           for v, r in zip(verdicts, records)]
  return {"judge/heldout_agreement": float(np.mean(right)) if right else float("nan"),
          "judge/heldout_count": len(right),
          "judge/heldout_unknown": sum(v == UNKNOWN for v in verdicts)}


class VerifierStage(Stage):
  kind = "verifier"
  uses_policy = False
  hands_off = False

  @property
  def pairs_path(self) -> str:
    return os.path.join(self.dir, PAIRS_FILE)

  def run(self, model=None) -> dict:
    del model
    metrics = self._verify() if jax.process_index() == 0 else {}
    return self.finish(None, {"metrics": metrics, "pairs": self.pairs_path}, export=False)

  def _verify(self) -> dict:
    ctx, cfg = self.ctx, self.cfg
    start = time.perf_counter()
    records = read_rollout_records(ctx.stage_dir(cfg.rollouts_from), cfg.last_rounds)
    tokenizer = ctx.tokenizer
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    with _judge(ctx, cfg) as (judge, served):
      metrics = {"judge/served": int(served)}
      if served and cfg.heldout_split:
        metrics.update(heldout_judge_metrics(ctx, judge, cfg.heldout_split, cfg.heldout_limit))
      trusted = served and not (metrics.get("judge/heldout_agreement", 1.0)
                                < cfg.min_heldout_agreement)
      metrics["judge/trusted"] = int(trusted)
      if served and not trusted:
        logging.warning("%s: judge agreement %.3f on %s is below %.3f; the rules judge instead",
                        self.name, metrics["judge/heldout_agreement"], cfg.heldout_split,
                        cfg.min_heldout_agreement)
      judge_start = time.perf_counter()
      result = verify(records, judge if trusted else RuleJudge(), cfg.verifier, encode,
                      ctx.eos_token_ids[0])
      metrics["time/judge_s"] = time.perf_counter() - judge_start
      if trusted:
        client = judge.client
        metrics.update({"judge/requests": client.num_requests,
                        "judge/failed_requests": client.num_failures,
                        "judge/retries": client.num_retries})
    write_verifier_outputs(self.dir, result)
    easy = easy_prompts(records)
    discarded = choose_discarded(easy, cfg.discard_fraction, cfg.discard_seed)
    write_discarded(self.dir, easy, discarded, cfg.discard_fraction, cfg.discard_seed)
    metrics.update(result.metrics)
    metrics.update({"verifier/easy_prompts": len(easy),
                    "verifier/discarded_prompts": len(discarded),
                    "time/sample_s": (time.perf_counter() - start) / max(1, len(result.checks))})
    ctx.writer.write(self.name, 0, metrics)
    logging.info("%s: %d rollouts, %d pairs %s, inconsistency %.3f, fallbacks %d",
                 self.name, len(result.checks), len(result.pairs),
                 {k.removeprefix("verifier/pairs_"): v for k, v in metrics.items()
                  if k.startswith("verifier/pairs_")},
                 metrics["verifier/inconsistency_rate"], metrics["verifier/fallbacks"])
    return null_nonfinite(metrics)


@contextlib.contextmanager
def _judge(ctx: RunContext, cfg: VerifierStageConfig) -> Iterator[tuple[Judge, bool]]:
  """(judge, served): the configured judge (`serve_judge`), or (none configured) the rules."""
  j, v = cfg.judge, cfg.verifier
  if not (j.from_stage or j.checkpoint or j.address):
    yield RuleJudge(), False
    return
  with serve_judge(ctx, j, v.judge_prompt, v.judge_max_tokens) as judge:
    yield judge, True


@contextlib.contextmanager
def serve_judge(ctx: RunContext, j: JudgeConfig, prompt: str,
                max_tokens: int) -> Iterator[PromptJudge]:
  """A judge LLM for the `with` block: its checkpoint served by JetStream on loopback, or a
  server already running at `j.address`. The server stops however the block ends."""
  checkpoint = ctx.policy_dir(j.from_stage) if j.from_stage else j.checkpoint
  # Imported here: JetStream pulls in TensorFlow (seconds), needed only with a judge model.
  from veripo_jax.serving.client import JudgeClient
  from veripo_jax.serving.server import start_server
  with contextlib.ExitStack() as stack:
    address = j.address
    if checkpoint:
      server = stack.enter_context(start_server(
          checkpoint, dtype=jax.numpy.dtype(j.dtype),
          max_concurrent_decodes=j.max_concurrent_decodes,
          max_prefill_length=j.max_prefill_length, max_decode_length=j.max_decode_length))
      address = server.address
    client = stack.enter_context(JudgeClient(address, timeout_s=j.timeout_s,
                                             retries=j.retries, max_workers=j.max_workers))
    yield PromptJudge(client, _judge_tokenizer(ctx, j, checkpoint), prompt, max_tokens)


def _judge_tokenizer(ctx: RunContext, j: JudgeConfig, checkpoint: str):
  if j.tokenizer_dir:
    return load_tokenizer(j.tokenizer_dir)
  if checkpoint and os.path.exists(os.path.join(checkpoint, "tokenizer_config.json")):
    return load_tokenizer(checkpoint)
  return ctx.tokenizer
