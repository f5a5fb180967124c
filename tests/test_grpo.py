"""GRPO's round on a small synthetic world: a group's G responses sharing one prompt row
(`share_prompt`) train on the same log-probs and loss as one row per response."""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx

import test_dpo
from test_dpo import DATA, FROZEN, OPT, make_ctx
from veripo_jax.models.qwen2_5_vl import Qwen25VL
from veripo_jax.rl.grpo import GRPOConfig, group_builder, grpo_round, micro_batches
from veripo_jax.rl.objectives import GRPOObjective, SequenceLogprobs
from veripo_jax.rl.rollout import RolloutConfig
from veripo_jax.train.learner import Learner

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
world = test_dpo.world      # the small world fixture, shared
G = 4


def test_shared_prompt_rows_give_each_response_its_own_logprobs_and_the_same_loss(
    world, tmp_path):
  ctx = make_ctx(world, tmp_path)
  cfg = GRPOConfig(global_batch=8, micro_batch=8, data=DATA,
                   rollout=RolloutConfig(num_samples=G, max_new_tokens=12))
  learner = Learner(Qwen25VL(ctx.model_config, rngs=nnx.Rngs(5)), OPT, ctx.mesh, frozen=FROZEN)
  prompts = next(b for b in ctx.loader(DATA)
                 if set(np.asarray(b["data_type"])) & {"video", "image"})
  rollouts, groups, _ = grpo_round(ctx, learner, cfg, prompts, 0, jax.random.key(0))
  assert rollouts.lengths.max() > 1
  # Advantages that differ per response, so a misordered row would change the loss.
  rollouts = dataclasses.replace(
      rollouts, advantages=np.linspace(-1.0, 1.0, len(rollouts.owner)).astype(np.float32))
  shared_cfg = dataclasses.replace(cfg, share_prompt=True)
  per_row = micro_batches(group_builder(ctx, learner, cfg, prompts), rollouts, groups, 2)
  shared = micro_batches(group_builder(ctx, learner, shared_cfg, prompts), rollouts, groups, 2)
  assert [b.sequences.branches for b in shared] == [G] * len(shared)
  objective = GRPOObjective()
  for a, b in zip(per_row, shared):
    assert b.sequences.inputs.input_ids.shape[0] * G == a.sequences.inputs.input_ids.shape[0]
    # Row order: prompt-major (a) vs branch-major (b) over the same responses.
    n = len(a.advantages)
    order = np.arange(n).reshape(n // G, G).T.reshape(-1)
    np.testing.assert_array_equal(b.advantages, a.advantages[order])
    logp_a = np.asarray(learner.evaluate(SequenceLogprobs(), a.sequences))
    logp_b = np.asarray(learner.evaluate(SequenceLogprobs(), b.sequences))
    assert np.abs(logp_a).sum() > 0
    np.testing.assert_allclose(logp_b, logp_a[order], atol=2e-5)
    loss = lambda batch: learner.evaluate(
        lambda m, x: objective(m, x).loss_sum / objective(m, x).weight, batch)
    np.testing.assert_allclose(float(loss(b)), float(loss(a)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("share_prompt", [False, True], ids=["row-per-response", "shared"])
def test_a_short_micro_batch_is_padded_without_changing_its_loss(world, tmp_path, share_prompt):
  """Three groups in micro-batches of two: the second holds one group and a copy of it that
  carries no tokens and no advantage, so it keeps the full row count (dividing over the batch
  shards like the others) and the loss terms of the one group alone."""
  ctx = make_ctx(world, tmp_path)
  cfg = GRPOConfig(global_batch=8, micro_batch=8, data=DATA, share_prompt=share_prompt,
                   rollout=RolloutConfig(num_samples=G, max_new_tokens=12))
  learner = Learner(Qwen25VL(ctx.model_config, rngs=nnx.Rngs(5)), OPT, ctx.mesh, frozen=FROZEN)
  prompts = next(iter(ctx.loader(DATA)))
  rollouts, groups, _ = grpo_round(ctx, learner, cfg, prompts, 0, jax.random.key(0))
  assert len(groups) >= 3
  rollouts = dataclasses.replace(
      rollouts, advantages=np.linspace(-1.0, 1.0, len(rollouts.owner)).astype(np.float32))
  builder = group_builder(ctx, learner, cfg, prompts)
  first, short = micro_batches(builder, rollouts, groups[:3], 2)
  [alone] = micro_batches(builder, rollouts, groups[2:3], 1)
  rows = lambda b: b.sequences.inputs.input_ids.shape[0]
  assert rows(short) == rows(first) == 2 * rows(alone)
  assert np.asarray(short.sequences.loss_mask).sum() == np.asarray(alone.sequences.loss_mask).sum()
  assert np.count_nonzero(short.advantages) == np.count_nonzero(alone.advantages) > 0
  objective = GRPOObjective()
  for term in ("loss_sum", "weight"):
    value = lambda batch: learner.evaluate(lambda m, x: getattr(objective(m, x), term), batch)
    np.testing.assert_allclose(float(value(short)), float(value(alone)), rtol=1e-5, atol=1e-6)
