"""DPO on a small synthetic world: pair batches carry their pair index and bucketed widths,
batches within one bucket reuse compiled programs, reference log-probs are computed once per
pair and equal a per-batch recomputation, and the stage logs its cost per trained sequence.

Compilation dominates the cost here: learners use one device and a single prompt and patch
bucket, so each test compiles each program once.
"""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from veripo_jax.data.synthetic.build import build_world
from veripo_jax.data.synthetic.world import WorldConfig
from veripo_jax.data.tokenization import load_tokenizer
from veripo_jax.data.vision import VisionSettings
from veripo_jax.inference import generate
from veripo_jax.models.qwen2_5_vl import Qwen25VL, fit_to_tokenizer, get_preset
from veripo_jax.models.qwen2_5_vl.model import prepare_inputs
from veripo_jax.parallel.sharding import make_mesh
from veripo_jax.rl.dpo import (DPOConfig, DPOStage, ReferenceLogprobs, dpo_micro_batches,
                               nll_weights, packed_width, step_batches)
from veripo_jax.rl.objectives import DPOBatch, DPOObjective, SequenceLogprobs
from veripo_jax.rl.pair_data import pair_groups, pair_loader
from veripo_jax.rl.pairs import Pair
from veripo_jax.models.qwen2_5_vl.vision_index import coarsen_vision
from veripo_jax.rl.sequences import SequenceBuilder, encode_vision, prompt_inputs
from veripo_jax.rl.stage import DataConfig, RunContext, sequence_builder
from veripo_jax.train.learner import Learner
from veripo_jax.train.metrics import MetricsWriter, read_metrics
from veripo_jax.train.optimizer import OptimizerConfig
from veripo_jax.train.preemption import PreemptionGuard

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")

VISION = VisionSettings(video_min_pixels=56 * 56, max_pixels=112 * 112,
                        image_min_pixels=56 * 56, image_max_pixels=112 * 112)
# One prompt and one patch bucket: only the response bucket could pick a new program.
DATA = DataConfig(batch_size=4, vision=VISION, prompt_buckets=(1024,),
                  response_buckets=(32, 128), patch_buckets=(4096,), seed=1)
OPT = OptimizerConfig(learning_rate=1e-2, schedule="constant", warmup_ratio=0.0)
FROZEN = (r"^visual\.",)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  paths = build_world(tmp_path_factory.mktemp("world"), seed=0, split_sizes={"train": 24},
                      world=WorldConfig(tokenizer_corpus_examples=200,
                                        tokenizer_vocab_size=600))
  tokenizer = load_tokenizer(paths.tokenizer_dir)
  base = get_preset("tiny")
  config = fit_to_tokenizer(base, tokenizer)
  return paths, tokenizer, config


def make_ctx(world, workdir) -> RunContext:
  paths, tokenizer, config = world
  return RunContext(workdir=str(workdir), mesh=make_mesh(1, 1, 1, devices=jax.devices()[:1]),
                    model_config=config, tokenizer=tokenizer,
                    tokenizer_dir=paths.tokenizer_dir, dataset_dir=paths.dataset_dir,
                    writer=MetricsWriter(workdir, tensorboard=False), guard=PreemptionGuard())


def make_pairs(n: int, lengths, seed: int = 0) -> list[Pair]:
  """Pair i on train example i; chosen i has `lengths[i]` tokens, rejected a few less."""
  rng = np.random.default_rng(seed)
  return [Pair(f"p{i}", i, "test", tuple(rng.integers(10, 200, lengths[i]).tolist()),
               tuple(rng.integers(10, 200, max(1, lengths[i] - 3 - i % 5)).tolist()))
          for i in range(n)]


def loader_of(ctx, pairs, data=DATA, per_row=1):
  v = ctx.model_config.vision
  return pair_loader(pairs, ctx.dataset_dir, "train", ctx.loader_config(data),
                     merge_size=v.spatial_merge_size, patch_dim=v.patch_dim, per_row=per_row)


def on_prompts(pairs, prompts):
  """`pairs` moved onto train examples `prompts` (several pairs per prompt)."""
  return [dataclasses.replace(p, source_index=s) for p, s in zip(pairs, prompts)]


def fine_patches(ctx, batch) -> int:
  """Patch rows the model's own (fine) vision bucketing gives the batch."""
  inputs, _ = prepare_inputs(ctx.model_config, batch["input_ids"], batch["attention_mask"],
                             pixel_values=batch["pixel_values"],
                             image_grid_thw=batch["image_grid_thw"],
                             pixel_values_videos=batch["pixel_values_videos"],
                             video_grid_thw=batch["video_grid_thw"],
                             second_per_grid_ts=batch["second_per_grid_ts"],
                             position_ids=batch["position_ids"])
  return 0 if inputs.vision is None else inputs.vision.pixel_values.shape[0]


def test_pair_batches_carry_their_index_and_bucketed_widths(world, tmp_path):
  ctx = make_ctx(world, tmp_path)
  pairs = make_pairs(8, [40 + 5 * i for i in range(8)])
  loader = loader_of(ctx, pairs)
  seen = []
  for _ in range(4):                                  # two epochs
    batch = next(loader)
    assert batch["responses"].shape[1] in DATA.response_buckets
    for row, i in enumerate(batch["pair_index"]):
      pair = pairs[i]
      assert batch["source_index"][row] == pair.source_index
      n = len(pair.chosen_tokens)
      assert batch["response_lengths"][row] == n
      np.testing.assert_array_equal(batch["responses"][row, :n], pair.chosen_tokens)
      assert batch["response_lengths"][row + 4] == len(pair.rejected_tokens)
    seen += batch["pair_index"].tolist()
  assert sorted(seen[:8]) == sorted(seen[8:]) == list(range(8))


def test_pairs_group_by_prompt_up_to_per_row_ordered_by_first_pair():
  pairs = on_prompts(make_pairs(7, [5] * 7), [3, 1, 3, 3, 1, 2, 3])
  assert pair_groups(pairs, 2) == [(0, 2), (1, 4), (3, 6), (5,)]
  assert pair_groups(pairs, 1) == [(i,) for i in range(7)]
  other = pairs[:6] + [dataclasses.replace(pairs[6], split="other")]   # another split's prompt 3
  assert pair_groups(other, 4) == [(0, 2, 3), (1, 4), (5,), (6,)]


def test_rows_with_two_pair_slots_hold_each_pairs_responses(world, tmp_path):
  """A row per prompt with both of its pairs (or one and an empty slot): every slot's
  responses are its pair's tokens, slot-major, and each pair comes once an epoch."""
  ctx = make_ctx(world, tmp_path)
  pairs = on_prompts(make_pairs(7, [30 + 4 * i for i in range(7)]), [0, 0, 1, 1, 2, 2, 3])
  loader = loader_of(ctx, pairs, per_row=2)
  for _ in range(2):                   # 4 rows a batch: each batch is an epoch
    batch = next(loader)
    k = len(batch["input_ids"])
    index = batch["pair_index"].reshape(2, k)
    for slot, row in np.ndindex(2, k):
      i = index[slot, row]
      chosen, rejected = slot * k + row, (2 + slot) * k + row
      if i < 0:
        assert batch["response_lengths"][[chosen, rejected]].tolist() == [0, 0]
        continue
      assert batch["source_index"][row] == pairs[i].source_index
      for r, tokens in ((chosen, pairs[i].chosen_tokens), (rejected, pairs[i].rejected_tokens)):
        assert batch["response_lengths"][r] == len(tokens)
        np.testing.assert_array_equal(batch["responses"][r, :len(tokens)], tokens)
    assert sorted(i for i in index.reshape(-1) if i >= 0) == list(range(7))


def test_two_pairs_a_row_give_each_pair_the_log_probs_and_loss_of_its_own_row(world, tmp_path):
  """The same 6 pairs on 3 prompts, one pair a row vs both pairs of a prompt in one row, in
  blocks or packed end to end: the same chosen and rejected log-probs per pair, and the same
  DPO loss."""
  ctx = make_ctx(world, tmp_path)
  pairs = on_prompts(make_pairs(6, [20 + 9 * i for i in range(6)]), [0, 0, 1, 1, 2, 2])
  learner = Learner(Qwen25VL(ctx.model_config, rngs=nnx.Rngs(0)), OPT, ctx.mesh, frozen=FROZEN)
  per_pair, losses, widths = [], [], []
  for per_row, pack in ((1, False), (2, False), (2, True)):
    data = dataclasses.replace(DATA, batch_size=6 // per_row)          # every pair, one step
    cfg = DPOConfig(micro_batch=6, pairs_per_row=per_row, pack_responses=pack, data=data)
    width = packed_width(cfg, pairs)
    batch = next(loader_of(ctx, pairs, data, per_row))
    [micro] = step_batches(ctx, learner, cfg, batch, ReferenceLogprobs(6, learner.snapshot()),
                           width=width)
    assert micro.sequences.branches == 2 * per_row
    widths.append(micro.sequences.inputs.input_ids.shape[1] - micro.sequences.prompt_width)
    index = np.concatenate([m["pair_index"] for m in dpo_micro_batches(
        sequence_builder(ctx, learner, batch, data, branches=2 * per_row), batch, 6)])
    seq = np.asarray(learner.evaluate(SequenceLogprobs(), micro.sequences)).sum(-1)
    values = np.zeros((6, 2))
    live = index >= 0
    values[index[live]] = np.stack([seq[:len(index)], seq[len(index):]], 1)[live]
    assert sorted(index[live]) == list(range(6))
    per_pair.append(values)
    shifted = dataclasses.replace(micro, ref_logp=micro.ref_logp - 0.5)   # a non-zero margin
    losses.append(float(learner.evaluate(DPOObjective(nll_coef=1.0), shifted).loss_sum))
  # Pairs of 20..65 + 17..64 tokens: 4 blocks of the 128 bucket, or the longest row's tokens.
  longest = max(sum(len(pairs[i].chosen_tokens) + len(pairs[i].rejected_tokens) for i in g)
                for g in ((0, 1), (2, 3), (4, 5)))
  assert widths == [2 * 128, 4 * 128, -(-longest // 16) * 16]
  for values, loss in zip(per_pair[1:], losses[1:]):
    np.testing.assert_allclose(values, per_pair[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(loss, losses[0], rtol=1e-5)
  with pytest.raises(ValueError, match="pairs_per_row"):
    DPOConfig(micro_batch=3, pairs_per_row=2)


@pytest.mark.parametrize("frozen", [FROZEN, ()], ids=["frozen_vision", "trained_vision"])
def test_batches_within_one_bucket_reuse_compiled_programs(world, tmp_path, frozen):
  """Three batches whose longest responses (and media mixes) differ, all within one response
  bucket: the reference forward and the update compile once."""
  ctx = make_ctx(world, tmp_path)
  pairs = make_pairs(12, [40 + 7 * i for i in range(12)])     # 40 .. 117 tokens: bucket 128
  model = Qwen25VL(ctx.model_config, rngs=nnx.Rngs(0))
  learner = Learner(model, OPT, ctx.mesh, frozen=frozen)
  reference = ReferenceLogprobs(len(pairs), learner.snapshot())
  loader = loader_of(ctx, pairs)
  widths, patches, features = set(), set(), set()
  for _ in range(3):
    batch = next(loader)
    widths.add(int(batch["response_lengths"].max()))
    patches.add(fine_patches(ctx, batch))
    builder = sequence_builder(ctx, learner, batch, DATA)
    if builder.features is not None:
      features.add(builder.features.shape)
    micro = [DPOBatch(sequences=m["sequences"], ref_logp=reference(learner, m),
                      valid=m["valid"]) for m in dpo_micro_batches(builder, batch, 4)]
    learner.step(DPOObjective(), micro)
  assert len(widths) == 3 and len(patches) > 1       # the batches' shapes did differ
  jits = learner._jits
  assert jits[("evaluate", SequenceLogprobs())]._cache_size() == 1
  assert jits[("accumulate", DPOObjective(), True)]._cache_size() == 1
  if frozen:
    assert len(features) == 1
    assert jits[("evaluate", encode_vision)]._cache_size() == 1
    assert micro[0].sequences.inputs.vision is None    # ref and update share the features


def test_coarsened_vision_gives_the_same_features(world, tmp_path):
  ctx = make_ctx(world, tmp_path)
  batch = next(loader_of(ctx, make_pairs(4, [20] * 4)))
  inputs = prompt_inputs(ctx.model_config, batch)
  coarse = coarsen_vision(inputs.vision, (4096,), ctx.model_config.vision.spatial_merge_size)
  assert coarse.pixel_values.shape[0] == 4096
  model = Qwen25VL(ctx.model_config, rngs=nnx.Rngs(1))
  fine_f = np.asarray(model.visual(inputs.vision))
  coarse_f = np.asarray(model.visual(coarse))
  n = int((inputs.feature_index >= 0).sum())
  np.testing.assert_allclose(coarse_f[:n], fine_f[:n], rtol=1e-5, atol=1e-5)


def test_generation_from_the_builders_preparation_equals_generation_from_the_batch(world,
                                                                                    tmp_path):
  """A GRPO round prepares its prompts once: sampling from the builder's inputs (coarsened
  vision, the tower's features computed by the learner) gives the tokens sampling from the
  raw batch gives."""
  ctx = make_ctx(world, tmp_path)
  loader = ctx.loader(DATA)
  batch = next(b for b in loader if set(np.asarray(b["data_type"])) & {"video", "image"})
  learner = Learner(Qwen25VL(ctx.model_config, rngs=nnx.Rngs(3)), OPT, ctx.mesh, frozen=FROZEN)
  builder = sequence_builder(ctx, learner, batch, DATA)
  prepared = builder.generation_inputs()
  assert prepared[0].vision is None and prepared[0].vision_features is not None
  kw = dict(max_new_tokens=6, num_samples=2, eos_token_ids=ctx.eos_token_ids)
  fields = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids", "pixel_values",
                                  "image_grid_thw", "pixel_values_videos", "video_grid_thw",
                                  "second_per_grid_ts")}
  raw = generate(learner.model(), fields, **kw)
  shared = generate(learner.model(), {}, prepared=prepared, **kw)
  np.testing.assert_array_equal(np.asarray(shared.tokens), np.asarray(raw.tokens))
  np.testing.assert_allclose(np.asarray(shared.logprobs), np.asarray(raw.logprobs), atol=1e-4)


def test_reference_is_computed_once_per_pair_and_equals_recomputation(world, tmp_path):
  """Three epochs over 8 pairs: the reference forward runs in the first epoch only, and every
  cached value equals a fresh reference forward on the step's batch, while the policy moves."""
  ctx = make_ctx(world, tmp_path)
  pairs = make_pairs(8, [20 + 3 * i for i in range(8)])        # bucket 32
  model = Qwen25VL(ctx.model_config, rngs=nnx.Rngs(0))
  learner = Learner(model, OPT, ctx.mesh, frozen=FROZEN)
  reference = ReferenceLogprobs(len(pairs), learner.snapshot())
  calls = []
  evaluate = learner.evaluate

  def counting(fn, batch, params=None):
    if isinstance(fn, SequenceLogprobs):
      calls.append(len(batch.targets))
    return evaluate(fn, batch, params=params)
  learner.evaluate = counting
  loader = loader_of(ctx, pairs)
  moved = 0.0
  for step in range(6):
    batch = next(loader)
    builder = sequence_builder(ctx, learner, batch, DATA)
    micro = []
    for m in dpo_micro_batches(builder, batch, 2):              # two micro-batches a step
      cached = reference(learner, m)
      fresh = np.asarray(evaluate(SequenceLogprobs(), m["sequences"],
                                  params=reference.params)).sum(-1)
      np.testing.assert_allclose(cached, fresh, rtol=1e-5, atol=1e-4)
      current = np.asarray(evaluate(SequenceLogprobs(), m["sequences"])).sum(-1)
      moved = max(moved, float(np.abs(current - fresh).max()))
      micro.append(DPOBatch(sequences=m["sequences"], ref_logp=cached, valid=m["valid"]))
    learner.step(DPOObjective(beta=0.5), micro)
    if step == 1:
      assert reference.known.all()
  assert moved > 1e-2                                  # the policy left the reference
  assert calls == [4] * 4                              # 8 pairs x 2 sequences, epoch 1 only
  assert reference.sequences == 16


def test_nll_weights_follow_each_pairs_family(world, tmp_path):
  """`nll_families` gives each micro-batch's pairs their family's NLL weight, by pair index."""
  ctx = make_ctx(world, tmp_path)
  families = ("consistency", "reflection", "accuracy", "reflection")
  pairs = [dataclasses.replace(p, family=families[i % 4])
           for i, p in enumerate(make_pairs(8, [20] * 8))]
  cfg = DPOConfig(micro_batch=2, data=DATA, nll_families=("consistency", "accuracy"))
  weight = nll_weights(cfg, pairs)
  np.testing.assert_array_equal(weight, [p.family != "reflection" for p in pairs])
  assert nll_weights(dataclasses.replace(cfg, nll_families=()), pairs) is None
  with pytest.raises(ValueError, match="nll_families"):
    DPOConfig(nll_families=("reflections",))
  learner = Learner(Qwen25VL(ctx.model_config, rngs=nnx.Rngs(0)), OPT, ctx.mesh, frozen=FROZEN)
  batch = next(loader_of(ctx, pairs))
  micro = step_batches(ctx, learner, cfg, batch, ReferenceLogprobs(8, learner.snapshot()),
                       weight)
  index = np.asarray(batch["pair_index"])
  np.testing.assert_array_equal(np.concatenate([m.nll_weight for m in micro]), weight[index])


def test_nll_term_covers_each_chosen_response_from_its_nll_from(world, tmp_path):
  """With `Pair.chosen_nll_from`, the loss is DPO on whole responses plus each chosen
  response's mean NLL over its tokens from that offset (none past its end), computed here from
  per-token log-probs."""
  ctx = make_ctx(world, tmp_path)
  starts = [0, 5, 12, 30]                                   # 30: past the 20 tokens
  pairs = [dataclasses.replace(p, chosen_nll_from=n)
           for p, n in zip(make_pairs(4, [20] * 4), starts)]
  learner = Learner(Qwen25VL(ctx.model_config, rngs=nnx.Rngs(0)), OPT, ctx.mesh, frozen=FROZEN)
  cfg = DPOConfig(micro_batch=4, data=DATA, objective=DPOObjective(beta=0.5, nll_coef=1.0))
  batch = next(loader_of(ctx, pairs))
  [micro] = step_batches(ctx, learner, cfg, batch, ReferenceLogprobs(4, learner.snapshot()))
  start = np.array([starts[i] for i in batch["pair_index"]])
  np.testing.assert_array_equal(micro.nll_from, start)
  micro = dataclasses.replace(micro, ref_logp=micro.ref_logp - 0.3 * np.arange(8))
  logp = np.asarray(learner.evaluate(SequenceLogprobs(), micro.sequences), np.float64)
  seq, ref = logp.sum(-1), np.asarray(micro.ref_logp, np.float64)
  x = 0.5 * ((seq[:4] - ref[:4]) - (seq[4:] - ref[4:]))
  nll = np.array([-logp[i, n:20].sum() / max(1, 20 - n) for i, n in enumerate(start)])
  want = (np.log1p(np.exp(-x)) + nll).sum()
  got = float(learner.evaluate(cfg.objective, micro).loss_sum)
  assert nll[start == 30] == 0 and abs(want - np.log1p(np.exp(-x)).sum()) > 1.0
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_loss_equals_the_unbucketed_per_batch_reference_loss(world, tmp_path):
  """The trained-tower path after one update: the DPO loss from coarsened vision inputs and
  cached reference log-probs equals the one from the model's own buckets and a reference
  forward on the batch (what the stage computed before)."""
  ctx = make_ctx(world, tmp_path)
  pairs = make_pairs(4, [20 + 3 * i for i in range(4)])
  learner = Learner(Qwen25VL(ctx.model_config, rngs=nnx.Rngs(0)), OPT, ctx.mesh, frozen=())
  reference = ReferenceLogprobs(len(pairs), learner.snapshot())
  batch = next(loader_of(ctx, pairs))
  [m] = dpo_micro_batches(sequence_builder(ctx, learner, batch, DATA), batch, 4)
  new = DPOBatch(sequences=m["sequences"], ref_logp=reference(learner, m), valid=m["valid"])
  learner.step(DPOObjective(), [new])
  fine = SequenceBuilder(ctx.model_config, batch, response_buckets=DATA.response_buckets)
  [f] = dpo_micro_batches(fine, batch, 4)
  assert f["sequences"].inputs.vision.pixel_values.shape[0] < 4096
  ref = np.asarray(learner.evaluate(SequenceLogprobs(), f["sequences"],
                                    params=reference.params)).sum(-1)
  old = DPOBatch(sequences=f["sequences"], ref_logp=ref, valid=f["valid"])
  objective = DPOObjective(beta=0.5)
  got, want = (learner.evaluate(objective, b) for b in (new, old))
  assert abs(float(want.loss_sum) / 4 - np.log(2)) > 1e-3      # the policy moved
  np.testing.assert_allclose(float(got.loss_sum), float(want.loss_sum), rtol=1e-5)
  for name in ("margin", "chosen_logp", "rejected_logp"):
    np.testing.assert_allclose(float(got.metrics[name][0]), float(want.metrics[name][0]),
                               rtol=1e-5, atol=1e-4)


def test_stage_logs_cost_per_sequence(world, tmp_path):
  ctx = make_ctx(world, tmp_path)
  pairs = make_pairs(6, [20 + 2 * i for i in range(6)])
  cfg = DPOConfig(epochs=2.0, micro_batch=2, data=dataclasses.replace(DATA, batch_size=3),
                  optimizer=OPT, save_every_steps=100)
  model = Qwen25VL(ctx.model_config, rngs=nnx.Rngs(0))
  summary = DPOStage(ctx, "dpo", cfg, pairs).run(model)
  assert summary["steps"] == 4 and summary["reference_sequences"] == 12
  assert summary["seconds_per_sequence"] > 0 and summary["reference_s"] > 0
  records = read_metrics(tmp_path, "dpo")
  per_pair = {r["step"]: r["time/sample_s"] for r in records if "time/sample_s" in r}
  per_seq = {r["step"]: r["time/sequence_s"] for r in records if "time/sequence_s" in r}
  ref = [r["time/reference_s"] for r in records if "time/reference_s" in r]
  assert sorted(per_pair) == sorted(per_seq) == [1, 2, 3, 4]
  for step, seconds in per_seq.items():
    assert 0 < seconds <= per_pair[step] / 2
  assert ref[0] > 0 and ref[2:] == [0.0, 0.0]        # the second epoch reuses the reference
  done = json.loads((tmp_path / "stages/dpo/done.json").read_text())
  assert done["seconds_per_sequence"] == summary["seconds_per_sequence"]


def test_stage_without_pairs_passes_the_policy_on(world, tmp_path):
  ctx = make_ctx(world, tmp_path)
  model = Qwen25VL(ctx.model_config, rngs=nnx.Rngs(0))
  summary = DPOStage(ctx, "dpo", DPOConfig(data=DATA), []).run(model)
  assert summary["steps"] == 0 and summary["pairs"] == 0
  assert os.path.exists(tmp_path / "stages/dpo/policy/config.json")
