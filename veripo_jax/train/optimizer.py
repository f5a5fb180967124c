"""AdamW with linear warmup and cosine (or constant) decay, clipped by global gradient norm."""

from __future__ import annotations

import dataclasses
import optax

SCHEDULES = ("cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-6
  total_steps: int = 100          # optimizer steps of the stage (the schedule's horizon)
  warmup_ratio: float = 0.03      # share of total_steps spent warming up linearly from 0
  schedule: str = "cosine"
  end_lr_ratio: float = 0.0       # cosine floor as a share of learning_rate
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 0.0
  max_grad_norm: float = 1.0      # <= 0 disables clipping

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"optimizer.schedule: unknown {self.schedule!r}; choose from {SCHEDULES}")
    if self.total_steps < 1:
      raise ValueError(f"optimizer.total_steps must be >= 1, got {self.total_steps}")

  @property
  def warmup_steps(self) -> int:
    return int(round(self.warmup_ratio * self.total_steps))


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  warmup = cfg.warmup_steps
  if cfg.schedule == "constant":
    if not warmup:
      return optax.constant_schedule(cfg.learning_rate)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, cfg.learning_rate, warmup),
         optax.constant_schedule(cfg.learning_rate)], [warmup])
  return optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, warmup, max(cfg.total_steps, warmup + 1),
      end_value=cfg.learning_rate * cfg.end_lr_ratio)


def make_optimizer(cfg: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
  schedule = learning_rate_schedule(cfg)
  adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                      weight_decay=cfg.weight_decay)
  if cfg.max_grad_norm > 0:
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw), schedule
  return adamw, schedule
