"""Evaluation on held-out prompts: greedy (or sampled) answers scored by the training rewards.

Reports accuracy, format, response length and truncation, overall and per task, and keeps the
responses (`responses.jsonl`) for the verifier's inconsistency measurement and for people.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time

import jax
import numpy as np

from veripo_jax.fileio import write_jsonl_atomic
from veripo_jax.rl.artifacts import RESPONSES_FILE
from veripo_jax.rl.rollout import RolloutConfig, collect_rollouts
from veripo_jax.rl.stage import DataConfig, RunContext, Stage
from veripo_jax.rl.verifier import rule_inconsistency_rate
from veripo_jax.train.metrics import progress


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  data: DataConfig = DataConfig(split="heldout", shuffle=False, num_epochs=1)
  rollout: RolloutConfig = RolloutConfig(num_samples=1, temperature=0.0)
  max_batches: int | None = None


def evaluate(ctx: RunContext, model, cfg: EvalConfig, *, desc: str = "eval"
             ) -> tuple[dict, list[dict]]:
  """(metrics, per-response records) over the split (once through, in order)."""
  loader = ctx.loader(cfg.data, drop_remainder=False)
  records, start = [], time.perf_counter()
  for i, prompts in enumerate(progress(loader, desc=desc)):
    if cfg.max_batches is not None and i >= cfg.max_batches:
      break
    rollouts = collect_rollouts(model, prompts, ctx.tokenizer, cfg.rollout,
                                jax.random.key(ctx.seed + i), eos_token_ids=ctx.eos_token_ids,
                                pad_token_id=ctx.model_config.pad_token_id, mesh=ctx.mesh,
                                rules=ctx.rules)
    for rec in rollouts.records():
      if rec["length"] > 0:
        rec.pop("logprobs")
        records.append(rec)
  return summarize(records, time.perf_counter() - start), records


def summarize(records: list[dict], seconds: float) -> dict:
  if not records:
    raise ValueError("evaluation saw no examples (empty split?)")
  out = {"eval/count": len(records), "time/sample_s": seconds / len(records)}
  for name in records[0]["rewards"]:
    out[f"eval/{name}"] = float(np.mean([r["rewards"][name] for r in records]))
  out["eval/length_mean"] = float(np.mean([r["length"] for r in records]))
  out["eval/truncated_rate"] = float(np.mean([r["truncated"] for r in records]))
  out["eval/inconsistency_rate"] = rule_inconsistency_rate([r["text"] for r in records])
  by_task = collections.defaultdict(list)
  for r in records:
    by_task[r["task"]].append(r["rewards"].get("accuracy", 0.0))
  for task, values in sorted(by_task.items()):
    out[f"eval/accuracy_{task}"] = float(np.mean(values))
  return out


class EvalStage(Stage):
  kind = "eval"
  hands_off = False

  def run(self, model) -> dict:
    metrics, records = evaluate(self.ctx, model, self.cfg, desc=self.name)
    self.ctx.writer.write(self.name, 0, metrics)
    if jax.process_index() == 0:
      write_jsonl_atomic(os.path.join(self.dir, RESPONSES_FILE), records)
    return self.finish(model, {"metrics": metrics}, export=False)
