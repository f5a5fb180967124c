"""The SFT stage: masked next-token loss on gold responses (cold starts, the tiny world's warm
start).

One optimizer step per loader batch (`data.batch_size` examples per host), accumulated over
micro-batches of `micro_batch` examples.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from veripo_jax.rl.objectives import SFTObjective
from veripo_jax.rl.sequences import split_supervised
from veripo_jax.rl.stage import DataConfig, RunContext, Stage, sequence_builder
from veripo_jax.train.learner import Learner
from veripo_jax.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class SFTConfig:
  steps: int = 100
  micro_batch: int = 8
  data: DataConfig = DataConfig()
  objective: SFTObjective = SFTObjective()
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=1e-5)
  frozen: tuple[str, ...] = (r"^visual\.",)
  save_every_steps: int = 50
  keep_checkpoints: int = 2


def sft_micro_batches(ctx: RunContext, learner: Learner, batch: dict, micro_batch: int,
                      data: DataConfig) -> list:
  prompts, responses, lengths = split_supervised(batch)
  builder = sequence_builder(ctx, learner, prompts, data)
  rows = np.flatnonzero(np.asarray(batch["example_mask"]))
  return [builder(part, np.arange(len(part)), responses[part], lengths[part])
          for part in (rows[i:i + micro_batch] for i in range(0, len(rows), micro_batch))]


class SFTStage(Stage):
  kind = "sft"

  def __init__(self, ctx: RunContext, name: str, cfg: SFTConfig):
    super().__init__(ctx, name, cfg)

  def run(self, model) -> dict:
    ctx, cfg = self.ctx, self.cfg
    learner = Learner(model, dataclasses.replace(cfg.optimizer, total_steps=cfg.steps),
                      ctx.mesh, rules=ctx.rules, frozen=cfg.frozen)
    loader = ctx.loader(cfg.data, with_response=True)
    extras = self.restore(learner)
    if extras is not None:
      loader.set_state(extras["loader"])
    metrics = self.run_steps(
        learner, loader, cfg.steps, cfg.save_every_steps,
        lambda batch: learner.step(cfg.objective, sft_micro_batches(
            ctx, learner, batch, cfg.micro_batch, cfg.data)))
    return self.finish(learner.model(), {"steps": cfg.steps, "last": metrics})
