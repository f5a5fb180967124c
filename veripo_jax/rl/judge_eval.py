"""An independent consistency grade of the evaluations: a judge no training stage used reads
every evaluated response and says whether its reasoning concludes with its answer.

The verifier's judge builds DPO's pairs, so it must not also grade DPO (it would grade its own
training signal). This stage serves another judge checkpoint (trained on other data or with
another seed) with JetStream, like the verifier stage, and asks it about the responses of the
eval stages it names. Each eval stage gets `judge_verdicts.jsonl` beside its `responses.jsonl`:
one line per response with a think and an answer, `{"index", "verdict"}` (consistent |
inconsistent | unknown), which the run report turns into an inconsistency rate with its
standard error. The judge's agreement with the labelled held-out split is measured too.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax

from veripo_jax.data.prompts import JUDGE_PROMPT
from veripo_jax.fileio import read_jsonl, write_jsonl_atomic
from veripo_jax.rl.artifacts import RESPONSES_FILE, VERDICTS_FILE
from veripo_jax.rl.answers import parse_response
from veripo_jax.rl.stage import Stage
from veripo_jax.rl.verifier import PromptJudge, parse_verdict
from veripo_jax.rl.verifier_stage import JudgeConfig, heldout_judge_metrics, serve_judge



@dataclasses.dataclass(frozen=True)
class JudgeEvalConfig:
  evals: tuple[str, ...] = ()       # eval stages whose responses are graded
  judge: JudgeConfig = JudgeConfig()
  judge_prompt: str = JUDGE_PROMPT
  judge_max_tokens: int = 8
  heldout_split: str = ""           # labelled judge examples for its agreement ("" skips)
  heldout_limit: int = 0

  def __post_init__(self):
    if not self.evals:
      raise ValueError("evals: name at least one eval stage to grade")
    if not (self.judge.from_stage or self.judge.checkpoint or self.judge.address):
      raise ValueError("judge: set from_stage, checkpoint or address (an independent judge)")


def read_responses(path: str) -> list[dict]:
  """An eval stage's responses; a bad line names the file and line."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no responses (is the eval stage finished and before "
                            "this one?)")
  return read_jsonl(path)


def grade(judge: PromptJudge, responses: list[dict]) -> list[dict]:
  """Verdict lines for the responses with a think and an answer (the judge's question needs
  both; the report counts the rest as stating no conclusion)."""
  parsed = [(i, parse_response(r["text"])) for i, r in enumerate(responses)]
  asked = [(i, p) for i, p in parsed if p.think and p.answer]
  replies = judge.verdicts([(p.think, p.answer) for _, p in asked])
  return [{"index": i, "verdict": parse_verdict(reply)} for (i, _), reply in zip(asked, replies)]


class JudgeEvalStage(Stage):
  kind = "judge_eval"
  uses_policy = False
  hands_off = False

  def run(self, model=None) -> dict:
    del model
    metrics = self._grade() if jax.process_index() == 0 else {}
    return self.finish(None, {"metrics": metrics}, export=False)

  def _grade(self) -> dict:
    ctx, cfg = self.ctx, self.cfg
    start = time.perf_counter()
    responses = {name: read_responses(os.path.join(ctx.stage_dir(name), RESPONSES_FILE))
                 for name in cfg.evals}
    metrics = {}
    with serve_judge(ctx, cfg.judge, cfg.judge_prompt, cfg.judge_max_tokens) as judge:
      if cfg.heldout_split:
        metrics.update(heldout_judge_metrics(ctx, judge, cfg.heldout_split, cfg.heldout_limit))
      graded = 0
      for name, records in responses.items():
        lines = grade(judge, records)
        write_jsonl_atomic(os.path.join(ctx.stage_dir(name), VERDICTS_FILE), lines)
        graded += len(lines)
        metrics[f"judge_eval/{name}/inconsistent"] = sum(
            v["verdict"] == "inconsistent" for v in lines)
        metrics[f"judge_eval/{name}/judged"] = len(lines)
    metrics["judge_eval/graded"] = graded
    metrics["time/sample_s"] = (time.perf_counter() - start) / max(1, graded)
    ctx.writer.write(self.name, 0, metrics)
    return metrics
