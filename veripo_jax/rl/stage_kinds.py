"""The stage kinds a run can name: one registry that planning, the loop and the report read.

A kind is its config dataclass (which types the stage's config section) and its `rl.stage.Stage`
class, whose class attributes say what the report needs: whether it trains a policy
(`trains`), which metrics time its steps (`step_times`), and which metric prefixes are its own
(`metric_prefixes`, to recognise a stage that has not finished).
"""

from __future__ import annotations

import dataclasses

from veripo_jax.rl.dpo import DPOConfig, DPOStage
from veripo_jax.rl.evaluate import EvalConfig, EvalStage
from veripo_jax.rl.grpo import GRPOConfig, GRPOStage
from veripo_jax.rl.judge_eval import JudgeEvalConfig, JudgeEvalStage
from veripo_jax.rl.sft import SFTConfig, SFTStage
from veripo_jax.rl.verifier_stage import VerifierStage, VerifierStageConfig


@dataclasses.dataclass(frozen=True)
class StageKind:
  config: type                  # types `config.stages.<name>` (less the loop's own fields)
  stage: type                   # `stage(ctx, name, config)` runs it


STAGE_KINDS: dict[str, StageKind] = {
    cls.kind: StageKind(config, cls)
    for config, cls in ((SFTConfig, SFTStage), (GRPOConfig, GRPOStage), (DPOConfig, DPOStage),
                        (EvalConfig, EvalStage), (VerifierStageConfig, VerifierStage),
                        (JudgeEvalConfig, JudgeEvalStage))}


def register_stage_kind(kind: str, config_cls: type, stage_cls: type) -> None:
  """Makes `kind` a stage kind: `config_cls` types its section, `stage_cls(ctx, name, config)`
  runs it (a `rl.stage.Stage`)."""
  if kind in STAGE_KINDS:
    raise ValueError(f"stage kind {kind!r} is already registered")
  STAGE_KINDS[kind] = StageKind(config_cls, stage_cls)


def training_kinds() -> tuple[str, ...]:
  """The kinds whose stages train a policy (a stage can start from one's export)."""
  return tuple(k for k, v in STAGE_KINDS.items() if v.stage.trains)


def step_times(kind: str) -> tuple[tuple[str, int], ...]:
  """(metric, sequences per value) pairs that time one step of a `kind` stage, in order of
  preference; () for an unknown kind."""
  return STAGE_KINDS[kind].stage.step_times if kind in STAGE_KINDS else ()


def kind_of_metric(key: str) -> str | None:
  """The kind whose stages write metric `key` (`grpo/loss` -> grpo), if any."""
  prefix = key.split("/")[0] if "/" in key else None
  for kind, entry in STAGE_KINDS.items():
    if prefix in (kind, *entry.stage.metric_prefixes):
      return kind
  return None
