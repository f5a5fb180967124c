"""The `benchmark` stage kind: the authors' evaluation of the current policy, resumable.

It serves the configured judge (any local Qwen2 / Qwen2.5 instruct checkpoint, or a running
server; independent of the judge training used) for the judge's inconsistency rate, and writes
`predictions.jsonl` and `eval_report.{json,md,png}` in the stage directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os

import jax

from veripo_jax.data.prompts import JUDGE_PROMPT
from veripo_jax.data.vision import VisionSettings
from veripo_jax.eval.prompts import EvalPromptEncoder
from veripo_jax.eval.report import summarize, write_eval_report
from veripo_jax.eval.runner import (PREDICTIONS_FILE, BenchmarkEvalConfig, EvalContext,
                                    evaluate_benchmark, load_all, read_predictions)
from veripo_jax.rl.stage import Preempted, Stage
from veripo_jax.rl.verifier_stage import JudgeConfig, serve_judge


@dataclasses.dataclass(frozen=True)
class BenchmarkStageConfig(BenchmarkEvalConfig):
  judge: JudgeConfig = JudgeConfig()   # none set: the rule's inconsistency only
  judge_prompt: str = JUDGE_PROMPT
  judge_max_tokens: int = 8


class BenchmarkStage(Stage):
  kind = "benchmark"
  hands_off = False

  def judge_name(self) -> str:
    j = self.cfg.judge
    return (f"stage {j.from_stage}" if j.from_stage else j.checkpoint or
            (f"server {j.address}" if j.address else ""))

  def run(self, model) -> dict:
    cfg, ctx = self.cfg, self.ctx
    datasets = load_all(cfg)
    os.makedirs(self.dir, exist_ok=True)
    path = os.path.join(self.dir, PREDICTIONS_FILE)
    vision = ctx.model_config.vision
    with contextlib.ExitStack() as stack:
      judge = (stack.enter_context(serve_judge(ctx, cfg.judge, cfg.judge_prompt,
                                               cfg.judge_max_tokens))
               if self.judge_name() else None)
      ectx = EvalContext(
          model=model, tokenizer=ctx.tokenizer,
          encoder=EvalPromptEncoder(ctx.tokenizer, cfg.template, vision.spatial_merge_size),
          vision=VisionSettings.for_model(vision), mesh=ctx.mesh, rules=ctx.rules,
          eos_token_ids=ctx.eos_token_ids, pad_token_id=ctx.model_config.pad_token_id,
          judge=judge, should_stop=ctx.guard.should_stop)
      for data in datasets:
        evaluate_benchmark(data, cfg, ectx, path)
        if ctx.guard.should_stop():
          raise Preempted(f"{self.name}: stopped during {data.name}; predictions so far kept")
    report = summarize(datasets, read_predictions(path), judge=self.judge_name(),
                       max_new_tokens=cfg.max_new_tokens)
    if jax.process_index() == 0:
      write_eval_report(self.dir, report)
    metrics = {}
    for b in report["benchmarks"]:
      for key in ("score", "rule_inconsistency", "judge_inconsistency", "mean_length"):
        if b[key] is not None:
          metrics[f"benchmark/{b['benchmark']}_{key}"] = b[key]
    ctx.writer.write(self.name, 0, metrics)
    return self.finish(model, {"metrics": metrics}, export=False)
