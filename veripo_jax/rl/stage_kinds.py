"""The stage kinds a run can name: one registry that planning, the loop and the report read.

A kind is its config dataclass (which types the stage's config section), its `rl.stage.Stage`
class, and what the report needs to know of it: whether it trains a policy, which metrics time
its steps, and which metric prefixes are its own (to recognise a stage that has not finished).
The built-in kinds name their classes as "module:attribute", imported on first use, so reading
a run's report does not import the training code.
"""

from __future__ import annotations

import dataclasses
import importlib


@dataclasses.dataclass(frozen=True)
class StageKind:
  config: type | str            # types `config.stages.<name>` (less the loop's own fields)
  stage: type | str             # `stage(ctx, name, config)` runs it
  trains: bool = False          # it trains a policy (the report costs it per sequence)
  # (metric, trained sequences per value) that time one step, in order of preference.
  step_times: tuple[tuple[str, int], ...] = ()
  metric_prefixes: tuple[str, ...] = ()   # metric prefixes besides the kind's name
  # Fields of its section naming an earlier stage's artifact (or a file) that the loop reads
  # and passes to `stage(ctx, name, config, **inputs)` (`rl.artifacts.STAGE_INPUTS`).
  inputs: tuple[str, ...] = ()

  @property
  def config_cls(self) -> type:
    return _resolve(self.config)

  @property
  def stage_cls(self) -> type:
    return _resolve(self.stage)


def _resolve(target: type | str) -> type:
  if not isinstance(target, str):
    return target
  module, _, attribute = target.partition(":")
  return getattr(importlib.import_module(module), attribute)


def _builtin(module: str, config: str, stage: str, **kw) -> StageKind:
  return StageKind(f"veripo_jax.rl.{module}:{config}", f"veripo_jax.rl.{module}:{stage}", **kw)


STAGE_KINDS: dict[str, StageKind] = {
    "sft": _builtin("sft", "SFTConfig", "SFTStage", trains=True,
                    step_times=(("time/sample_s", 1),)),
    # A GRPO step's sample is one response; a DPO step's a pair (two sequences).
    "grpo": _builtin("grpo", "GRPOConfig", "GRPOStage", trains=True,
                     step_times=(("time/response_s", 1), ("time/sample_s", 1))),
    "dpo": _builtin("dpo", "DPOConfig", "DPOStage", trains=True,
                    step_times=(("time/sequence_s", 1), ("time/sample_s", 2)),
                    inputs=("pairs",)),
    "eval": _builtin("evaluate", "EvalConfig", "EvalStage"),
    "verifier": _builtin("verifier_stage", "VerifierStageConfig", "VerifierStage",
                         metric_prefixes=("judge",)),
    "judge_eval": _builtin("judge_eval", "JudgeEvalConfig", "JudgeEvalStage"),
    # The authors' benchmark protocol (veripo_jax.eval), resumable per batch.
    "benchmark": StageKind("veripo_jax.eval.stage:BenchmarkStageConfig",
                           "veripo_jax.eval.stage:BenchmarkStage"),
}


def register_stage_kind(kind: str, config_cls: type, stage_cls: type, *, trains: bool = False,
                        step_times: tuple[tuple[str, int], ...] = (),
                        metric_prefixes: tuple[str, ...] = (),
                        inputs: tuple[str, ...] = ()) -> None:
  """Makes `kind` a stage kind: `config_cls` types its section, `stage_cls(ctx, name, config)`
  runs it (a `rl.stage.Stage`); the rest tells the report how to cost it."""
  if kind in STAGE_KINDS:
    raise ValueError(f"stage kind {kind!r} is already registered")
  STAGE_KINDS[kind] = StageKind(config_cls, stage_cls, trains, tuple(step_times),
                                tuple(metric_prefixes), tuple(inputs))


def training_kinds() -> tuple[str, ...]:
  """The kinds whose stages train a policy (a stage can start from one's export)."""
  return tuple(k for k, v in STAGE_KINDS.items() if v.trains)


def step_times(kind: str) -> tuple[tuple[str, int], ...]:
  """(metric, sequences per value) pairs that time one step of a `kind` stage, in order of
  preference; () for an unknown kind."""
  return STAGE_KINDS[kind].step_times if kind in STAGE_KINDS else ()


def kind_of_metric(key: str) -> str | None:
  """The kind whose stages write metric `key` (`grpo/loss` -> grpo), if any."""
  prefix = key.split("/")[0] if "/" in key else None
  for kind, entry in STAGE_KINDS.items():
    if prefix in (kind, *entry.metric_prefixes):
      return kind
  return None
