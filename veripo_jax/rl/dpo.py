"""The DPO stage: sigmoid DPO on stored preference pairs against the start-of-stage policy.

Each step reads `data.batch_size` prompt rows per host, each with one pair or (`pairs_per_row`)
up to that many pairs on the prompt; all responses of a row share one encoding of the
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
from veripo_jax.rl.pair_data import pair_groups, pair_loader
from veripo_jax.rl.pair_families import PAIR_FAMILIES
from veripo_jax.rl.pairs import Pair
from veripo_jax.rl.sequences import SequenceBuilder
from veripo_jax.rl.stage import DataConfig, RunContext, Stage, sequence_builder
from veripo_jax.train.learner import Learner
from veripo_jax.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class DPOConfig:
  epochs: float = 1.0              # passes over the pairs; sets the number of steps
  micro_batch: int = 8             # pair slots (rows x pairs_per_row) per micro-batch
  # batch_size = prompt rows per step per host, each with up to pairs_per_row pairs
  data: DataConfig = DataConfig(batch_size=32)
  objective: DPOObjective = DPOObjective()
  optimizer: OptimizerConfig = OptimizerConfig(learning_rate=5e-7)
  frozen: tuple[str, ...] = (r"^visual\.",)
  # Chosen and rejected share one row: the prompt once, then the two responses, each masked
  # from the other (`rl.sequences`); same log-probs, one prompt's compute instead of two.
  share_prompt: bool = True
  # Pairs on one prompt that share its row (with share_prompt): 2 puts the verifier's two
  # pairs of a prompt (`max_pairs_per_prompt`) in one row, the prompt once for 4 responses.
  pairs_per_row: int = 1
  # With share_prompt: a row's responses sit end to end, padded once to the stage's longest row
  # (`packed_width`), not each to the longest response; one width, so no recompilation.
  pack_responses: bool = False
  # Pair families whose chosen response gets the RPO NLL term (`objective.nll_coef`); () =
  # every family. A reflection pair's chosen response opens with the rejected (wrong)
  # reasoning: imitating it token by token teaches that reasoning too.
  nll_families: tuple[str, ...] = ()
  save_every_steps: int = 50
  keep_checkpoints: int = 2

  def __post_init__(self):
    if self.pairs_per_row < 1 or self.micro_batch % self.pairs_per_row:
      raise ValueError(f"pairs_per_row: {self.pairs_per_row} must be >= 1 and divide "
                       f"micro_batch ({self.micro_batch})")
    unknown = sorted(set(self.nll_families) - set(PAIR_FAMILIES))
    if unknown:
      raise ValueError(f"nll_families: unknown pair families {unknown}; registered: "
                       f"{sorted(PAIR_FAMILIES)}")

  def steps(self, num_rows: int) -> int:
    """Optimizer steps for `num_rows` loader items (pair groups, `pair_data.pair_groups`)."""
    per_step = self.data.batch_size * jax.process_count()
    return max(1, math.ceil(num_rows * self.epochs / per_step))


def dpo_micro_batches(builder: SequenceBuilder, batch: dict, micro_batch: int) -> list[dict]:
  """Host-side (sequences, valid, pair_index) per micro-batch of `micro_batch` pair slots.

  A batch of K rows with P pair slots each (`PairCollator`) gives micro-batches of
  micro_batch / P rows; their sequences are the 2P response blocks of those rows (chosen of
  each slot, then rejected), so sequence log-probs split into chosen and rejected halves whose
  pairs follow `pair_index` (slot-major). Empty slots are not valid.
  """
  k = len(batch["input_ids"])
  index = np.asarray(batch["pair_index"], np.int64).reshape(-1, k)         # (P, K)
  nll_from = np.asarray(batch["nll_from"], np.int32).reshape(-1, k)        # (P, K)
  slots = len(index)
  rows_per_micro = max(1, micro_batch // slots)
  mask = np.asarray(batch["example_mask"]).astype(bool)
  out = []
  for i in range(0, k, rows_per_micro):
    rows = np.arange(i, min(k, i + rows_per_micro))
    blocks = (np.arange(2 * slots)[:, None] * k + rows[None]).reshape(-1)
    seq = builder(rows, np.tile(np.arange(len(rows)), 2 * slots), batch["responses"][blocks],
                  batch["response_lengths"][blocks])
    pair_index = index[:, rows].reshape(-1)
    valid = (pair_index >= 0) & np.tile(mask[rows], slots)
    out.append({"sequences": seq, "valid": valid.astype(np.float32), "pair_index": pair_index,
                "nll_from": nll_from[:, rows].reshape(-1)})
  return out


def nll_weights(cfg: DPOConfig, pairs: Sequence[Pair]) -> np.ndarray | None:
  """Per pair index: 1 where the pair's family gets the NLL term, else 0 (None: all do)."""
  if not cfg.nll_families:
    return None
  return np.array([p.family in cfg.nll_families for p in pairs], np.float32)


def packed_width(cfg: DPOConfig, pairs: Sequence[Pair], quantum: int = 16) -> int | None:
  """The response columns of a packed row (`pack_responses`): the most tokens any row's pairs
  (`pair_groups`) hold, rounded up to `quantum`; None when rows are not packed."""
  if not (cfg.pack_responses and cfg.share_prompt):
    return None
  most = max((sum(len(pairs[i].chosen_tokens) + len(pairs[i].rejected_tokens) for i in group)
              for group in pair_groups(pairs, cfg.pairs_per_row)), default=1)
  return -(-most // quantum) * quantum


def step_batches(ctx: RunContext, learner: Learner, cfg: DPOConfig, batch: dict,
                 reference: "ReferenceLogprobs", nll_weight: np.ndarray | None = None,
                 width: int | None = None) -> list[DPOBatch]:
  """One DPO step's micro-batches, the algorithm without the bookkeeping: each pair's chosen and
  rejected response (sharing one row with `share_prompt`), their reference log-probs, where
  each chosen response's NLL term starts (`Pair.chosen_nll_from`), and with `nll_weight` (per
  pair index, `nll_weights`) each pair's weight of the NLL term. `width`: the packed rows'
  response columns (`packed_width`)."""
  slots = len(batch["pair_index"]) // len(batch["input_ids"])
  builder = sequence_builder(ctx, learner, batch, cfg.data,
                             branches=2 * slots if cfg.share_prompt else 1, packed_width=width)
  return [DPOBatch(sequences=m["sequences"], ref_logp=reference(learner, m), valid=m["valid"],
                   nll_from=m["nll_from"], nll_weight=None if nll_weight is None else
                   np.where(m["pair_index"] >= 0, nll_weight[np.maximum(m["pair_index"], 0)],
                            0.0).astype(np.float32))
          for m in dpo_micro_batches(builder, batch, cfg.micro_batch)]


def pairs_in(batch: dict) -> int:
  """The pairs a DPO batch trains (its samples, in the paper's unit)."""
  return int(np.sum(np.asarray(batch["pair_index"]) >= 0))


class ReferenceLogprobs:
  """Reference sequence log-probs (chosen, rejected) by pair index, kept on the host.

  A micro-batch holding a pair not seen yet runs the reference forward once (on the whole
  micro-batch, so shapes stay those of the update) and keeps the new pairs' values; pairs seen
  before keep their first values. `sequences` and `seconds` count the forward's cost.
  """

  def __init__(self, num_pairs: int, params, logprobs: SequenceLogprobs = SequenceLogprobs()):
    self.params = params
    self.logprobs = logprobs          # the objective's `sequence_logprobs()` (its chunks)
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
      ref = to_host(learner.evaluate(self.logprobs, micro["sequences"],
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
    super().__init__(ctx, name, cfg)
    self.pairs = pairs

  def run(self, model) -> dict:
    ctx, cfg = self.ctx, self.cfg
    if not self.pairs:
      # A verifier that found no good rollout: the loop goes on with the policy unchanged.
      logging.warning("%s: no preference pairs; passing the policy on untrained", self.name)
      return self.finish(model, {"steps": 0, "pairs": 0, "pair_families": {}, "last": {}})
    total = cfg.steps(len(pair_groups(self.pairs, cfg.pairs_per_row)))
    learner = Learner(model, dataclasses.replace(cfg.optimizer, total_steps=total), ctx.mesh,
                      rules=ctx.rules, frozen=cfg.frozen)
    reference = ReferenceLogprobs(len(self.pairs), learner.snapshot(),
                                  cfg.objective.sequence_logprobs())
    nll_weight = nll_weights(cfg, self.pairs)
    width = packed_width(cfg, self.pairs)
    v = ctx.model_config.vision
    loader = _TimedLoader(pair_loader(
        self.pairs, ctx.data_dir(cfg.data), cfg.data.split, ctx.loader_config(cfg.data),
        merge_size=v.spatial_merge_size, patch_dim=v.patch_dim,
        process_index=jax.process_index(), process_count=jax.process_count(),
        gather_hosts=jax.process_count() > 1, per_row=cfg.pairs_per_row,
        resolve_dataset_dir=ctx.resolve_dataset_dir))
    extras = self.restore(learner)
    if extras is not None:
      loader.set_state(extras["loader"])
    timings = []

    def step_fn(batch):
      ref_before = reference.seconds
      metrics = learner.step(cfg.objective, step_batches(ctx, learner, cfg, batch, reference,
                                                         nll_weight, width))
      seconds = time.perf_counter() - loader.started
      sequences = 2 * pairs_in(batch)
      timings.append((seconds, sequences))
      ctx.writer.write(self.name, int(learner.state.step), {
          "time/sequence_s": seconds / max(1, sequences),
          "time/reference_s": reference.seconds - ref_before})
      return metrics

    metrics = self.run_steps(learner, loader, total, cfg.save_every_steps, step_fn,
                             samples=pairs_in)
    families = dict(collections.Counter(p.family for p in self.pairs))
    return self.finish(learner.model(), {
        "steps": total, "pairs": len(self.pairs), "pair_families": families, "last": metrics,
        "seconds_per_sequence": seconds_per_sequence(timings),
        "reference_s": reference.seconds, "reference_sequences": reference.sequences})
