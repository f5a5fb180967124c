"""The GRPO stage: rounds of (P prompts x G rollouts -> rewards -> advantages -> k updates).

Batch semantics (OpenRLHF's): `data.batch_size` prompts per rollout round per host, and
`global_batch` responses per optimizer step, so a round makes P*G / global_batch updates. A step
takes whole groups (global_batch / G prompts), which keeps each prompt's video encoded once in
the update; group order is shuffled per round with a seed. Micro-batches of `micro_batch`
responses accumulate exactly (see `train.learner`).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging

from veripo_jax.parallel.multihost import to_host
from veripo_jax.rl.artifacts import read_discarded
from veripo_jax.rl.objectives import GRPOBatch, GRPOObjective
from veripo_jax.rl.rollout import (RolloutConfig, Rollouts, collect_rollouts, read_rollouts,
                                   rollout_file, write_rollouts)
from veripo_jax.rl.sequences import SequenceBuilder
from veripo_jax.rl.stage import DataConfig, RunContext, Stage, sequence_builder
from veripo_jax.train.checkpointing import key_to_data
from veripo_jax.train.learner import Learner
from veripo_jax.train.optimizer import OptimizerConfig


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  rounds: int = 1
  global_batch: int = 64           # responses per optimizer step
  micro_batch: int = 16            # responses per accumulated micro-batch
  data: DataConfig = DataConfig()
  rollout: RolloutConfig = RolloutConfig()
  objective: GRPOObjective = GRPOObjective()
  optimizer: OptimizerConfig = OptimizerConfig()
  frozen: tuple[str, ...] = (r"^visual\.",)
  filter_zero_variance: bool = False   # drop groups whose G rewards are all equal
  # A group's G responses share one row: the prompt once, then G response blocks, each masked
  # from the others (`rl.sequences`): the same log-probs for one prompt's compute instead of G.
  # Rows grow to prompt + G x response tokens, so long responses want it off (dense masks).
  share_prompt: bool = False
  # Verifier stages whose discarded easy prompts this stage's data leaves out (§1); the list is
  # kept in the checkpoint, so a resumed stage drops the same prompts.
  discard_from: tuple[str, ...] = ()
  recompute_old_logprobs: bool = False  # else the sampler's log-probs are pi_old
  save_every_rounds: int = 1
  keep_checkpoints: int = 2

  def __post_init__(self):
    g = self.rollout.num_samples
    for name in ("global_batch", "micro_batch"):
      if getattr(self, name) % g:
        raise ValueError(f"grpo.{name}={getattr(self, name)} must be a multiple of "
                         f"rollout.num_samples={g} (steps take whole groups)")
    if self.global_batch % self.micro_batch:
      raise ValueError(f"grpo.global_batch={self.global_batch} must be a multiple of "
                       f"micro_batch={self.micro_batch}")

  @property
  def steps_per_round(self) -> int:
    prompts = self.data.batch_size * jax.process_count()
    return max(1, prompts * self.rollout.num_samples // self.global_batch)


def update_plan(groups: np.ndarray, groups_per_step: int, seed: int, round_index: int
                ) -> list[np.ndarray]:
  """Shuffled groups (prompt rows) split into steps; the last step may be smaller."""
  order = np.random.default_rng([seed, round_index]).permutation(np.asarray(groups))
  return [order[i:i + groups_per_step] for i in range(0, len(order), groups_per_step)]


def micro_batches(builder: SequenceBuilder, rollouts: Rollouts, groups: np.ndarray,
                  groups_per_micro: int) -> list[GRPOBatch]:
  """Host-side GRPO batches for the prompt rows `groups`: their G responses each.

  A short micro-batch (a step's last, or one of a round `filter_zero_variance` shortened) is
  padded to the full size with copies of its last group that carry no loss (no response
  tokens, no advantage): its rows still divide over the batch shards, where fewer rows could
  leave the micro-batch replicated on every shard, and it reuses the full size's program."""
  g = rollouts.group_size
  if builder.branches not in (1, g):
    raise ValueError(f"a shared prompt row holds a whole group: {builder.branches} branches "
                     f"for groups of {g}")
  full = min(groups_per_micro, len(rollouts.advantages) // g)
  out = []
  for i in range(0, len(groups), groups_per_micro):
    real = groups[i:i + groups_per_micro]
    rows = np.concatenate([real, np.repeat(real[-1:], max(0, full - len(real)))])
    if builder.branches == 1:          # prompt-major: the G responses of a prompt in turn
      idx = (rows[:, None] * g + np.arange(g)).reshape(-1)
      owner = np.repeat(np.arange(len(rows)), g)
    else:                              # branch-major: sample j of every prompt, then j + 1
      idx = (rows[None, :] * g + np.arange(g)[:, None]).reshape(-1)
      owner = np.tile(np.arange(len(rows)), g)
    keep = owner < len(real)
    seq = builder(rows, owner, rollouts.tokens[idx], rollouts.lengths[idx])
    mask = np.asarray(seq.loss_mask)
    seq = seq.replace(loss_mask=np.where(keep[:, None], mask, np.zeros_like(mask)))
    width = seq.targets.shape[1]
    old = np.zeros((len(idx), width), np.float32)
    take = min(width, rollouts.logprobs.shape[1])
    old[:, :take] = rollouts.logprobs[idx, :take]
    advantages = np.where(keep, rollouts.advantages[idx], 0).astype(rollouts.advantages.dtype)
    out.append(GRPOBatch(sequences=seq, old_logp=old, advantages=advantages))
  return out


def group_builder(ctx: RunContext, learner: Learner, cfg: GRPOConfig, prompts: dict
                  ) -> SequenceBuilder:
  """The round's sequence builder: one row per response, or per group with `share_prompt`."""
  return sequence_builder(ctx, learner, prompts, cfg.data,
                          branches=cfg.rollout.num_samples if cfg.share_prompt else 1)


def round_updates(ctx: RunContext, learner: Learner, cfg: GRPOConfig, prompts: dict,
                  rollouts: Rollouts, round_index: int, builder: SequenceBuilder,
                  ref_params=None) -> tuple[np.ndarray, list[list[GRPOBatch]]]:
  """One GRPO round's updates: the trained groups (live prompts; with `filter_zero_variance`
  only those whose G rewards differ) and, per optimizer step, its micro-batches with pi_old
  (the sampler's, or recomputed) and the KL reference's log-probs when `ref_params` is given.
  `builder`: the round's sequence builder (`group_builder`)."""
  g = cfg.rollout.num_samples
  live = np.asarray(prompts["example_mask"], bool)
  std = rollouts.rewards["total"].reshape(-1, g).std(1)
  groups = np.flatnonzero(live & ((std > 0) if cfg.filter_zero_variance else True))
  plan = update_plan(groups, cfg.global_batch // g, ctx.seed, round_index)
  steps = [micro_batches(builder, rollouts, step, cfg.micro_batch // g) for step in plan]
  logprobs = cfg.objective.sequence_logprobs()      # chunked as the update is
  if cfg.recompute_old_logprobs:
    steps = [[dataclasses.replace(b, old_logp=to_host(learner.evaluate(
        logprobs, b.sequences))) for b in step] for step in steps]
  if ref_params is not None:
    steps = [[dataclasses.replace(b, ref_logp=to_host(learner.evaluate(
        logprobs, b.sequences, params=ref_params))) for b in step] for step in steps]
  return groups, steps


def grpo_round(ctx: RunContext, learner: Learner, cfg: GRPOConfig, prompts: dict,
               round_index: int, rng: jax.Array, *, rollouts: Rollouts | None = None,
               ref_params=None) -> tuple[Rollouts, np.ndarray, list[list[GRPOBatch]]]:
  """One GRPO round, the algorithm without the bookkeeping: the prompts prepared once (and,
  with a frozen tower, their media encoded once) for both sampling and the update; G samples
  per prompt with rewards and advantages (unless this round's `rollouts` are given: a resumed
  round); then `round_updates`. Returns (rollouts, trained groups, per-step micro-batches)."""
  builder = group_builder(ctx, learner, cfg, prompts)
  if rollouts is None:
    rollouts = collect_rollouts(
        learner.model(), prompts, ctx.tokenizer, cfg.rollout, rng,
        eos_token_ids=ctx.eos_token_ids, pad_token_id=ctx.model_config.pad_token_id,
        mesh=ctx.mesh, rules=ctx.rules, dataset=ctx.dataset_ref(cfg.data),
        prepared=builder.generation_inputs())
  groups, steps = round_updates(ctx, learner, cfg, prompts, rollouts, round_index, builder,
                                ref_params)
  return rollouts, groups, steps


class GRPOStage(Stage):
  kind = "grpo"

  def __init__(self, ctx: RunContext, name: str, cfg: GRPOConfig):
    super().__init__(ctx, name, cfg)

  def rollout_path(self, round_index: int) -> str:
    return rollout_file(self.dir, round_index)

  def run(self, model) -> dict:
    ctx, cfg = self.ctx, self.cfg
    learner = Learner(model, dataclasses.replace(
        cfg.optimizer, total_steps=cfg.rounds * cfg.steps_per_round), ctx.mesh,
        rules=ctx.rules, frozen=cfg.frozen)
    # The stage's input policy is the KL reference (also after a resume: `model` is it).
    ref_params = learner.snapshot() if cfg.objective.kl_coef else None
    extras = self.restore(learner)
    discarded = (extras["discarded"] if extras is not None else
                 read_discarded(ctx.workdir, cfg.discard_from))
    loader = ctx.loader(cfg.data, exclude=discarded)
    if extras is None:
      extras = {"round": 0, "step_in_round": 0, "loader": loader.get_state(),
                "discarded": discarded}
      if discarded:
        logging.info("%s: leaving out %d discarded easy prompts", self.name, len(discarded))
    base_key = jax.random.key(ctx.seed)
    history = []
    for r in range(extras["round"], cfg.rounds):
      loader.set_state(extras["loader"])
      start = time.perf_counter()
      prompts = next(loader)
      resumed = extras["step_in_round"] > 0 and os.path.exists(self.rollout_path(r))
      stored = (read_rollouts(self.rollout_path(r), cfg.rollout.max_new_tokens) if resumed
                else None)
      rollouts, groups, batches = grpo_round(ctx, learner, cfg, prompts, r,
                                             jax.random.fold_in(base_key, r), rollouts=stored,
                                             ref_params=ref_params)
      if not resumed:
        write_rollouts(self.rollout_path(r), rollouts)
      generate_s = time.perf_counter() - start
      live = np.asarray(prompts["example_mask"], bool)
      update_start = time.perf_counter()
      for k in range(extras["step_in_round"], len(batches)):
        metrics = learner.step(cfg.objective, batches[k])
        ctx.writer.write(self.name, int(learner.state.step),
                         {f"grpo/{m}": v for m, v in metrics.items()})
        extras = {"round": r, "step_in_round": k + 1, "loader": extras["loader"],
                  "discarded": discarded}
        if k + 1 < len(batches):
          self.stop_if_requested(learner, extras)
      summary = rollouts.summary()
      elapsed = time.perf_counter() - start
      summary.update({
          "grpo/round": r, "grpo/groups_trained": len(groups),
          "time/generate_s": generate_s, "time/update_s": time.perf_counter() - update_start,
          "time/sample_s": elapsed / max(1, int((rollouts.lengths > 0).sum())),
          "time/prompt_s": elapsed / max(1, int(live.sum())),
          "data/skipped": sum(loader.skipped.values())})
      ctx.writer.write(self.name, int(learner.state.step), summary)
      history.append(summary)
      logging.info("%s round %d/%d: reward %.3f accuracy %.3f length %.1f (%.1f s)", self.name,
                   r + 1, cfg.rounds, summary["reward/mean"], summary.get("reward/accuracy", 0),
                   summary["response/length_mean"], elapsed)
      extras = {"round": r + 1, "step_in_round": 0, "loader": loader.get_state(),
                "rng": key_to_data(base_key).tolist(), "discarded": discarded}
      if (r + 1) % cfg.save_every_rounds == 0 or r + 1 == cfg.rounds:
        self.save(learner, extras)
      if r + 1 < cfg.rounds:
        self.stop_if_requested(learner, extras)
    return self.finish(learner.model(), {"rounds": cfg.rounds,
                                         "steps": int(learner.state.step),
                                         "last_round": history[-1] if history else {}})
