"""The DPO stage: sigmoid DPO on stored preference pairs against the start-of-stage policy.

Each step reads `data.batch_size` pairs per host; chosen and rejected share one encoding of the
prompt's video (with a frozen vision tower, one encoding per batch serves the reference pass
and the update). Reference sequence log-probs come from a frozen copy of the stage's input
policy: computed the first time a pair reaches a step and kept on the host by pair index, so
later epochs skip the reference forward. The input policy is also what a resumed run starts
from, so a resumed stage recomputes the same values and nothing extra is checkpointed.

Cost metrics per step: `time/sample_s` (seconds per pair, from `Stage.run_steps`),
`time/sequence_s` (seconds per trained sequence: chosen and rejected count one each) and
`time/reference_s` (the reference forward's share of the step).
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
from typing import Sequence

import jax
import numpy as np
from absl import logging

from veripo_jax.parallel.multihost import to_host
from veripo_jax.rl.objectives import DPOBatch, DPOObjective, SequenceLogprobs
from veripo_jax.rl.pair_data import pair_loader
from veripo_jax.rl.pair_families import PAIR_FAMILIES
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
  # Chosen and rejected share one row: the prompt once, then the two responses, each masked
  # from the other (`rl.sequences`); same log-probs, one prompt's compute instead of two.
  share_prompt: bool = True
  # Pair families whose chosen response gets the RPO NLL term (`objective.nll_coef`); () =
  # every family. A reflection pair's chosen response opens with the rejected (wrong)
  # reasoning: imitating it token by token teaches that reasoning too.
  nll_families: tuple[str, ...] = ()
  save_every_steps: int = 50
  keep_checkpoints: int = 2

  def __post_init__(self):
    unknown = sorted(set(self.nll_families) - set(PAIR_FAMILIES))
    if unknown:
      raise ValueError(f"nll_families: unknown pair families {unknown}; registered: "
                       f"{sorted(PAIR_FAMILIES)}")

  def steps(self, num_pairs: int) -> int:
    per_step = self.data.batch_size * jax.process_count()
    return max(1, math.ceil(num_pairs * self.epochs / per_step))


def dpo_micro_batches(builder: SequenceBuilder, batch: dict, micro_batch: int) -> list[dict]:
  """Host-side (sequences, valid, pair_index) per micro-batch: rows = chosen of each pair, then
  rejected."""
  k = len(batch["input_ids"])
  index = np.asarray(batch.get("pair_index", np.full(k, -1)), np.int64)
  out = []
  for i in range(0, k, micro_batch):
    rows = np.arange(i, min(k, i + micro_batch))
    idx = np.concatenate([rows, rows + k])
    seq = builder(rows, np.concatenate([np.arange(len(rows))] * 2), batch["responses"][idx],
                  batch["response_lengths"][idx])
    out.append({"sequences": seq, "valid": np.asarray(batch["example_mask"])[rows],
                "pair_index": index[rows]})
  return out


def nll_weights(cfg: DPOConfig, pairs: Sequence[Pair]) -> np.ndarray | None:
  """Per pair index: 1 where the pair's family gets the NLL term, else 0 (None: all do)."""
  if not cfg.nll_families:
    return None
  return np.array([p.family in cfg.nll_families for p in pairs], np.float32)


def step_batches(ctx: RunContext, learner: Learner, cfg: DPOConfig, batch: dict,
                 reference: "ReferenceLogprobs", nll_weight: np.ndarray | None = None
                 ) -> list[DPOBatch]:
  """One DPO step's micro-batches, the algorithm without the bookkeeping: each pair's chosen and
  rejected response (sharing one row with `share_prompt`), their reference log-probs, and
  with `nll_weight` (per pair index, `nll_weights`) each pair's weight of the NLL term."""
  builder = sequence_builder(ctx, learner, batch, cfg.data,
                             branches=2 if cfg.share_prompt else 1)
  return [DPOBatch(sequences=m["sequences"], ref_logp=reference(learner, m), valid=m["valid"],
                   nll_weight=None if nll_weight is None else
                   np.where(m["pair_index"] >= 0, nll_weight[np.maximum(m["pair_index"], 0)],
                            0.0).astype(np.float32))
          for m in dpo_micro_batches(builder, batch, cfg.micro_batch)]


class ReferenceLogprobs:
  """Reference sequence log-probs (chosen, rejected) by pair index, kept on the host.

  A micro-batch holding a pair not seen yet runs the reference forward once (on the whole
  micro-batch, so shapes stay those of the update) and keeps the new pairs' values; pairs seen
  before keep their first values. `sequences` and `seconds` count the forward's cost.
  """

  def __init__(self, num_pairs: int, params):
    self.params = params
    self.values = np.zeros((num_pairs, 2), np.float32)
    self.known = np.zeros(num_pairs, bool)
    self.sequences = 0
    self.seconds = 0.0

  def __call__(self, learner: Learner, micro: dict) -> np.ndarray:
    """(2P,) reference log-probs of `micro`'s pairs, chosen first; 0 on filler rows."""
    index = np.asarray(micro["pair_index"], np.int64)
    live = index >= 0
    slot = np.maximum(index, 0)
    new = live & ~self.known[slot]
    if new.any():
      start = time.perf_counter()
      ref = to_host(learner.evaluate(SequenceLogprobs(), micro["sequences"],
                                     params=self.params)).sum(-1)
      p = len(index)
      self.values[index[new]] = np.stack([ref[:p], ref[p:]], 1)[new]
      self.known[index[new]] = True
      self.sequences += len(ref)
      self.seconds += time.perf_counter() - start
    values = np.where(live[:, None], self.values[slot], 0.0).astype(np.float32)
    return np.concatenate([values[:, 0], values[:, 1]])


class _TimedLoader:
  """The stage's loader, noting when each batch was asked for (a step's start)."""

  def __init__(self, loader):
    self.loader = loader
    self.started = time.perf_counter()

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    self.started = time.perf_counter()
    return next(self.loader)

  @property
  def skipped(self) -> dict[str, int]:
    return self.loader.skipped

  def get_state(self) -> dict:
    return self.loader.get_state()

  def set_state(self, state: dict) -> None:
    self.loader.set_state(state)


def seconds_per_sequence(steps: list[tuple[float, int]]) -> float | None:
  """Wall seconds per trained sequence over (seconds, sequences) steps, without the first
  (compilation) when there are more than 2, as the run report averages stage times."""
  if len(steps) > 2:
    steps = steps[1:]
  sequences = sum(n for _, n in steps)
  return sum(s for s, _ in steps) / sequences if sequences else None


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
    reference = ReferenceLogprobs(len(self.pairs), learner.snapshot())
    nll_weight = nll_weights(cfg, self.pairs)
    v = ctx.model_config.vision
    loader = _TimedLoader(pair_loader(
        self.pairs, ctx.data_dir(cfg.data), cfg.data.split, ctx.loader_config(cfg.data),
        merge_size=v.spatial_merge_size, patch_dim=v.patch_dim,
        process_index=jax.process_index(), process_count=jax.process_count(),
        gather_hosts=jax.process_count() > 1, resolve_dataset_dir=ctx.resolve_dataset_dir))
    extras = self.restore(learner)
    if extras is not None:
      loader.set_state(extras["loader"])
    timings = []

    def step_fn(batch):
      ref_before = reference.seconds
      metrics = learner.step(cfg.objective, step_batches(ctx, learner, cfg, batch, reference,
                                                         nll_weight))
      seconds = time.perf_counter() - loader.started
      sequences = 2 * int(np.sum(batch["example_mask"]))
      timings.append((seconds, sequences))
      ctx.writer.write(self.name, int(learner.state.step), {
          "time/sequence_s": seconds / max(1, sequences),
          "time/reference_s": reference.seconds - ref_before})
      return metrics

    metrics = self.run_steps(learner, loader, total, cfg.save_every_steps, step_fn)
    families = dict(collections.Counter(p.family for p in self.pairs))
    return self.finish(learner.model(), {
        "steps": total, "pairs": len(self.pairs), "pair_families": families, "last": metrics,
        "seconds_per_sequence": seconds_per_sequence(timings),
        "reference_s": reference.seconds, "reference_sequences": reference.sequences})
