"""The DPO stage: sigmoid DPO on stored preference pairs against the start-of-stage policy.

Each step reads `data.batch_size` pairs per host; chosen and rejected share one encoding of the
prompt's video. Reference sequence log-probs come from a frozen copy of the stage's input
policy, computed per batch (the input policy is also what a resumed run starts from, so the
reference survives restarts without being checkpointed).
"""

from __future__ import annotations

import collections
import dataclasses
import math

import jax
import numpy as np
from absl import logging

from veripo_jax.parallel.multihost import to_host
from veripo_jax.rl.objectives import DPOBatch, DPOObjective, SequenceLogprobs
from veripo_jax.rl.pair_data import pair_loader
from veripo_jax.rl.pairs import Pair
from veripo_jax.rl.sequences import SequenceBuilder
from veripo_jax.rl.stage import DataConfig, RunContext, Stage, sequence_builder
from veripo_jax.train.learner import Learner
from veripo_jax.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  epochs: float = 1.0              # passes over the pairs; sets the number of steps
  micro_batch: int = 8             # pairs per accumulated micro-batch
  data: DataConfig = DataConfig(batch_size=32)   # batch_size = pairs per step per host
  objective: DPOObjective = DPOObjective()
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=5e-7)
  frozen: tuple[str, ...] = (r"^visual\.",)
  save_every_steps: int = 50
  keep_checkpoints: int = 2

  def steps(self, num_pairs: int) -> int:
    per_step = self.data.batch_size * jax.process_count()
    return max(1, math.ceil(num_pairs * self.epochs / per_step))


def dpo_micro_batches(builder: SequenceBuilder, batch: dict, micro_batch: int) -> list[dict]:
  """Host-side (sequences, valid) per micro-batch: rows = chosen of each pair, then rejected."""
  k = len(batch["input_ids"])
  out = []
  for i in range(0, k, micro_batch):
    rows = np.arange(i, min(k, i + micro_batch))
    idx = np.concatenate([rows, rows + k])
    seq = builder(rows, np.concatenate([np.arange(len(rows))] * 2), batch["responses"][idx],
                  batch["response_lengths"][idx])
    out.append({"sequences": seq, "valid": np.asarray(batch["example_mask"])[rows]})
  return out


class DPOStage(Stage):
  kind = "dpo"

  def __init__(self, ctx: RunContext, name: str, cfg: DPOConfig, pairs: list[Pair]):
    super().__init__(ctx, name, cfg.keep_checkpoints)
    self.cfg = cfg
    self.pairs = pairs

  def run(self, model) -> dict:
    ctx, cfg = self.ctx, self.cfg
    if not self.pairs:
      # A verifier that found no good rollout: the loop goes on with the policy unchanged.
      logging.warning("%s: no preference pairs; passing the policy on untrained", self.name)
      return self.finish(model, {"steps": 0, "pairs": 0, "pair_families": {}, "last": {}})
    total = cfg.steps(len(self.pairs))
    learner = Learner(model, dataclasses.replace(cfg.optimizer, total_steps=total), ctx.mesh,
                      rules=ctx.rules, frozen=cfg.frozen)
    reference = learner.snapshot()
    v = ctx.model_config.vision
    loader = pair_loader(self.pairs, ctx.data_dir(cfg.data), cfg.data.split, ctx.loader_config(
        cfg.data), merge_size=v.spatial_merge_size, patch_dim=v.patch_dim,
        process_index=jax.process_index(), process_count=jax.process_count(),
        gather_hosts=jax.process_count() > 1)
    extras = self.restore(learner)
    if extras is not None:
      loader.set_state(extras["loader"])

    def step_fn(batch):
      builder = sequence_builder(ctx, learner, batch, cfg.data.response_buckets)
      micro = []
      for m in dpo_micro_batches(builder, batch, cfg.micro_batch):
        ref = to_host(learner.evaluate(SequenceLogprobs(), m["sequences"], params=reference))
        micro.append(DPOBatch(sequences=m["sequences"], ref_logp=ref.sum(-1),
                              valid=m["valid"]))
      return learner.step(cfg.objective, micro)

    metrics = self.run_steps(learner, loader, total, cfg.save_every_steps, step_fn)
    families = dict(collections.Counter(p.family for p in self.pairs))
    return self.finish(learner.model(), {"steps": total, "pairs": len(self.pairs),
                                         "pair_families": families, "last": metrics})
