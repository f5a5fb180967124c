"""Wall time per trained sequence: GRPO (generation + rewards + update) vs DPO (update on pairs).

The paper's "DPO is ~7x faster than GRPO" measured on one model and one dataset: a GRPO round of
P prompts x G rollouts on the synthetic video-QA world, then DPO on pairs made from those same
rollouts (best vs worst response of each group), run as `DPOStage` runs it: `--dpo_epochs`
passes over the pairs, reference log-probs computed once per pair (its time amortized over the
steps), vision inputs padded to the patch buckets, chosen and rejected sharing one row's
prompt (`--dpo_separate_rows` copies the prompt into a row per response instead;
`--dpo_pairs_per_row 2` makes two pairs a prompt and puts both in its row, `--dpo_pack` packs a
row's responses end to end). Two units:

  per trained sequence: GRPO seconds per response (its share of generation, rewards and
    update) vs DPO seconds per trained sequence (chosen and rejected count one each);
  per training sample (the paper's): GRPO seconds per prompt (G responses) vs DPO per pair.

GRPO's first round is excluded (compilation); DPO compiles on a warm-up step over a second
loader's first batch, then times the stage's steps from its first batch with an empty reference
cache. GRPO figures are the median of the timed rounds; DPO's the mean of its timed steps (the
reference pass lands on the first epoch's steps only, so a median would hide it).

  python benchmarks/bench_grpo_vs_dpo.py [--preset tiny --prompts 8 --samples 8
      --new_tokens 128 --grpo_batch 32 --dpo_batch 8 --dpo_epochs 4 --grpo_share_prompt
      --dpo_pairs_per_row 2 --dpo_pack --dpo_train_vision --dpo_separate_rows --repeats 3
      --workdir /tmp/bench_rl]
"""
import argparse
import dataclasses
import itertools
import time

import jax
import ml_collections
import numpy as np
from absl import flags
from flax import nnx

from veripo_jax.data.sources import prepare_data
from veripo_jax.data.tokenization import load_tokenizer
from veripo_jax.data.vision import VisionSettings
from veripo_jax.models.qwen2_5_vl import Qwen25VL, fit_to_tokenizer, get_preset
from veripo_jax.parallel.sharding import make_mesh, shard_model
from veripo_jax.rl.dpo import DPOConfig, ReferenceLogprobs, packed_width, step_batches
from veripo_jax.rl.grpo import GRPOConfig, grpo_round
from veripo_jax.rl.pair_data import pair_groups, pair_loader
from veripo_jax.rl.pairs import Pair
from veripo_jax.rl.rollout import RolloutConfig
from veripo_jax.rl.stage import DataConfig, RunContext
from veripo_jax.train.learner import Learner
from veripo_jax.train.metrics import MetricsWriter
from veripo_jax.train.optimizer import OptimizerConfig
from veripo_jax.train.preemption import PreemptionGuard

SMALL = VisionSettings(video_min_pixels=56 * 56, max_pixels=112 * 112,
                       image_min_pixels=56 * 56, image_max_pixels=112 * 112)


def context(args) -> RunContext:
  """The synthetic world (built once into the workdir by the run's own data source)."""
  data = ml_collections.ConfigDict(dict(source="synthetic", world_seed=0,
                                        split_sizes={"train": 256}, world={}))
  tokenizer_dir, dataset_dir = prepare_data(data, args.workdir)
  tokenizer = load_tokenizer(tokenizer_dir)
  base = get_preset(args.preset)
  config = fit_to_tokenizer(base, tokenizer)
  return RunContext(workdir=args.workdir, mesh=make_mesh(1, -1, 1), model_config=config,
                    tokenizer=tokenizer, tokenizer_dir=tokenizer_dir, dataset_dir=dataset_dir,
                    writer=MetricsWriter(args.workdir, enabled=False), guard=PreemptionGuard())


def timed(fn):
  start = time.perf_counter()
  out = fn()
  jax.block_until_ready(out)
  return time.perf_counter() - start, out


def main():
  flags.FLAGS.mark_as_parsed()
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--preset", default="tiny")
  p.add_argument("--workdir", default="/tmp/bench_rl")
  for name, default in (("prompts", 8), ("samples", 8), ("new_tokens", 128),
                        ("grpo_batch", 32), ("dpo_batch", 8), ("repeats", 3)):
    p.add_argument(f"--{name}", type=int, default=default)
  p.add_argument("--dpo_epochs", type=float, default=4.0,
                 help="passes over the pairs (configs/tiny.py: 2)")
  p.add_argument("--dpo_separate_rows", action="store_true",
                 help="one row per response, the prompt copied into each (DPO's share_prompt off)")
  p.add_argument("--grpo_share_prompt", action="store_true",
                 help="a group's G responses share one row (GRPOConfig.share_prompt)")
  p.add_argument("--dpo_pairs_per_row", type=int, default=1,
                 help="pairs made per prompt (j-th best vs j-th worst), all in the prompt's row "
                      "(DPOConfig.pairs_per_row; configs/tiny.py: 2)")
  p.add_argument("--dpo_pack", action="store_true",
                 help="a row's responses end to end, padded once (DPOConfig.pack_responses)")
  p.add_argument("--dpo_train_vision", action="store_true",
                 help="DPO trains the vision tower too (default: frozen, as configs/tiny.py)")
  args = p.parse_args()
  ctx = context(args)
  model = shard_model(Qwen25VL(ctx.model_config, rngs=nnx.Rngs(0)), ctx.mesh)
  data = DataConfig(batch_size=args.prompts, vision=SMALL, prompt_buckets=(256, 512, 1024),
                    response_buckets=(64, 128, 256), patch_buckets=(1024, 2048, 4096))
  g = args.samples
  rollout = RolloutConfig(num_samples=g, max_new_tokens=args.new_tokens)
  grpo = GRPOConfig(global_batch=args.grpo_batch, micro_batch=args.grpo_batch, data=data,
                    rollout=rollout, share_prompt=args.grpo_share_prompt)
  learner = Learner(model, OptimizerConfig(learning_rate=1e-5), ctx.mesh)   # vision frozen
  loader = ctx.loader(data)

  grpo_rounds, grpo_steps, pairs = [], [], []
  for r in range(args.repeats + 1):
    start = time.perf_counter()
    prompts = next(loader)
    rollouts, _, steps = grpo_round(ctx, learner, grpo, prompts, r, jax.random.key(r))
    generate_s = time.perf_counter() - start     # sampling, and the updates' host batches
    update_s = 0.0
    for batches in steps:
      seconds, _ = timed(lambda: learner.step(grpo.objective, batches))
      update_s += seconds
      if r:
        grpo_steps.append(seconds)
    if r:
      grpo_rounds.append((time.perf_counter() - start, generate_s, update_s))
    totals = rollouts.rewards["total"].reshape(-1, g)
    ranked = np.argsort(-totals, axis=1, kind="stable")         # each group, best first
    for row, j in itertools.product(range(args.prompts), range(args.dpo_pairs_per_row)):
      best, worst = row * g + int(ranked[row, j]), row * g + int(ranked[row, g - 1 - j])
      pairs.append(Pair(prompt_id=rollouts.prompt_ids[best],
                        source_index=int(prompts["source_index"][row]), family="benchmark",
                        chosen_tokens=tuple(rollouts.tokens[best, :rollouts.lengths[best]]),
                        rejected_tokens=tuple(rollouts.tokens[worst, :rollouts.lengths[worst]])))

  per_row = args.dpo_pairs_per_row
  dpo = DPOConfig(micro_batch=args.dpo_batch * per_row, share_prompt=not args.dpo_separate_rows,
                  pairs_per_row=per_row, pack_responses=args.dpo_pack,
                  data=dataclasses.replace(data, batch_size=args.dpo_batch))
  v = ctx.model_config.vision
  loaders = [pair_loader(pairs, ctx.dataset_dir, "train", ctx.loader_config(dpo.data),
                         merge_size=v.spatial_merge_size, patch_dim=v.patch_dim,
                         per_row=per_row)
             for _ in range(2)]            # a warm-up one and the timed one: same batches
  dpo_learner = (Learner(learner.model(), OptimizerConfig(learning_rate=1e-5), ctx.mesh,
                         frozen=()) if args.dpo_train_vision else learner)
  snapshot = dpo_learner.snapshot()
  width = packed_width(dpo, pairs)

  def dpo_step(pair_batches, reference: ReferenceLogprobs) -> float:
    start = time.perf_counter()
    batch = next(pair_batches)
    dpo_learner.step(dpo.objective, step_batches(ctx, dpo_learner, dpo, batch, reference,
                                                 width=width))
    return time.perf_counter() - start

  # Compiles the first batch's programs; the timed steps then start at the stage's first batch
  # with an empty reference cache, as DPOStage does.
  dpo_step(loaders[0], ReferenceLogprobs(len(pairs), snapshot))
  reference = ReferenceLogprobs(len(pairs), snapshot)
  num_steps = dpo.steps(len(pair_groups(pairs, per_row)))
  dpo_steps = [dpo_step(loaders[1], reference) for _ in range(num_steps)]

  round_s, gen_s, upd_s = (float(np.median([x[i] for x in grpo_rounds])) for i in range(3))
  grpo_per_prompt = round_s / args.prompts
  grpo_per_response = grpo_per_prompt / g
  dpo_step_s = float(np.mean(dpo_steps))
  dpo_per_pair = dpo_step_s / (args.dpo_batch * per_row)
  dpo_per_sequence = dpo_per_pair / 2
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, preset {args.preset}, "
        f"{args.prompts} prompts x G={g}, <= {args.new_tokens} new tokens")
  print(f"GRPO round: {round_s:.2f} s (generation + rewards {gen_s:.2f} s, updates "
        f"{upd_s:.2f} s); per prompt {grpo_per_prompt * 1e3:.1f} ms, per response "
        f"{grpo_per_response * 1e3:.1f} ms")
  print(f"DPO: {num_steps} steps of {args.dpo_batch} rows x {per_row} pairs ({len(pairs)} pairs x "
        f"{args.dpo_epochs:g} epochs, vision tower "
        f"{'trained' if args.dpo_train_vision else 'frozen'}): {dpo_step_s:.2f} s a step, "
        f"of which reference {reference.seconds / num_steps:.2f} s amortized "
        f"({reference.sequences} sequences once); per pair {dpo_per_pair * 1e3:.1f} ms")
  print(f"train steps/s: GRPO update ({args.grpo_batch} responses) "
        f"{1 / float(np.median(grpo_steps)):.2f}, DPO ({args.dpo_batch * per_row} pairs) "
        f"{1 / dpo_step_s:.2f}")
  print(f"per trained sequence: GRPO {grpo_per_response * 1e3:.1f} ms per response, DPO "
        f"{dpo_per_sequence * 1e3:.1f} ms per sequence: DPO "
        f"{grpo_per_response / dpo_per_sequence:.2f}x cheaper")
  print(f"per training sample: GRPO {grpo_per_prompt * 1e3:.1f} ms per prompt, DPO "
        f"{dpo_per_pair * 1e3:.1f} ms per pair: {grpo_per_prompt / dpo_per_pair:.1f}x "
        f"(the paper reports ~7x)")


if __name__ == "__main__":
  main()
