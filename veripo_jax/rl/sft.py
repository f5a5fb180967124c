"""The SFT stage: masked next-token loss on gold responses (cold starts; the tiny world's warm start).

One optimizer step per loader batch (`data.batch_size` examples per host), accumulated over
micro-batches of `micro_batch` examples.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from veripo_jax.rl.objectives import SFTObjective
from veripo_jax.rl.sequences import build_sequences, select_prompts, split_supervised
from veripo_jax.rl.stage import DataConfig, RunContext, Stage
from veripo_jax.train.learner import Learner
from veripo_jax.train.metrics import progress
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


def sft_micro_batches(ctx: RunContext, batch: dict, micro_batch: int) -> list:
  prompts, responses, lengths = split_supervised(batch)
  rows = np.flatnonzero(np.asarray(batch["example_mask"]))
  out = []
  for i in range(0, len(rows), micro_batch):
    part = rows[i:i + micro_batch]
    out.append(build_sequences(ctx.model_config, select_prompts(prompts, part),
                               np.arange(len(part)), responses[part], lengths[part],
                               rope_mode=ctx.rope_mode))
  return out


class SFTStage(Stage):
  kind = "sft"

  def __init__(self, ctx: RunContext, name: str, cfg: SFTConfig):
    super().__init__(ctx, name, cfg.keep_checkpoints)
    self.cfg = cfg

  def run(self, model) -> dict:
    ctx, cfg = self.ctx, self.cfg
    learner = Learner(model, dataclasses.replace(cfg.optimizer, total_steps=cfg.steps),
                      ctx.mesh, rules=ctx.rules, frozen=cfg.frozen)
    loader = ctx.loader(cfg.data, with_response=True)
    extras = self.restore(learner)
    if extras is not None:
      loader.set_state(extras["loader"])
    start_step, t0, metrics = int(learner.state.step), time.perf_counter(), {}
    for step in progress(range(start_step, cfg.steps), total=cfg.steps - start_step,
                         desc=self.name):
      batch = next(loader)
      metrics = learner.step(cfg.objective, sft_micro_batches(ctx, batch, cfg.micro_batch))
      metrics = {f"sft/{k}": v for k, v in metrics.items()}
      metrics["time/sample_s"] = (time.perf_counter() - t0) / max(
          1, int(np.sum(batch["example_mask"])))
      ctx.writer.write(self.name, step + 1, metrics)
      t0 = time.perf_counter()
      extras = {"loader": loader.get_state()}
      if (step + 1) % cfg.save_every_steps == 0:
        self.save(learner, extras)
      if step + 1 < cfg.steps:
        self.stop_if_requested(learner, extras)
    return self.finish(learner.model(), {"steps": cfg.steps, "last": metrics})
