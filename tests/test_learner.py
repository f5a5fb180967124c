"""Learner on the tiny Qwen2.5-VL (fp32): exact accumulation, sharded steps, frozen tower,
response alignment of evaluate and build_sequences.

Compilation dominates the cost here, so one 1-device learner is shared and reset between runs,
and the accumulation parts are padded to the whole batch's shapes (the other prompts, with
empty responses or invalid pairs): every accumulate compiles at most twice.
"""

import jax
import numpy as np
import pytest
from flax import nnx

from veripo_jax.models.qwen2_5_vl import Qwen25VL, get_preset, get_rope_index
from veripo_jax.parallel.sharding import make_mesh
from veripo_jax.rl.objectives import (DPOBatch, DPOObjective, GRPOBatch, GRPOObjective,
                                      SequenceLogprobs)
from veripo_jax.rl.sequences import build_sequences, select_prompts
from veripo_jax.train.learner import Learner
from veripo_jax.train.optimizer import OptimizerConfig

from hf_reference import left_pad

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")

CFG = get_preset("tiny")
GRID = np.array([2, 4, 4])                 # 32 patches -> 8 video tokens
R = 5                                      # response width
G = 2                                      # GRPO responses per prompt
TOL = 1e-5
# Constant lr, no warmup (a warmup would make the first update 0); the norm clip is active.
# eps 1e-4: Adam's step-1 update g / (|g| + eps) is sign-like, so with eps 1e-8 a gradient
# element of ~1e-7 (fp32 summation noise ~1e-8 between meshes) could move by a large part of lr.
OPT = OptimizerConfig(learning_rate=1e-2, schedule="constant", warmup_ratio=0.0, eps=1e-4,
                      max_grad_norm=0.5)
OBJECTIVES = {
    "grpo-seq": GRPOObjective(kl_coef=0.05, aggregation="seq-mean-token-mean"),
    "grpo-token": GRPOObjective(kl_coef=0.05, clip_eps_high=0.28, aggregation="token-mean"),
    "dpo": DPOObjective(beta=0.5, label_smoothing=0.1),
}
# The two accumulation parts: prompts 0, 1 and prompts 2, 3, each padded to the whole batch's
# shapes by the other two prompts without responses (reordered: the videos swap places).
PARTS = ([0, 1, 3, 2], [2, 3, 0, 1])


def random_model(seed: int = 0) -> Qwen25VL:
  """The tiny model with every weight (biases, norms) random and non-trivial, without the slow
  eager init."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen25VL(CFG, rngs=nnx.Rngs(0))))
  rng = np.random.RandomState(seed)

  def fill(path, x):
    name = jax.tree_util.keystr(path)
    base = 1.0 if ("norm" in name or "ln_q" in name) else 0.0
    return (base + 0.1 * rng.randn(*x.shape)).astype(np.float32)
  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def prompt_batch(rng: np.random.RandomState) -> dict:
  """Collator-format prompts: rows 0 and 3 with a video, rows 1 and 2 text-only; left-padded."""
  vs, ve, v = CFG.vision_start_token_id, CFG.vision_end_token_id, CFG.video_token_id
  span = [vs] + [v] * (int(GRID.prod()) // 4) + [ve]
  rows = [[3, 4] + span + [5, 6], list(range(10, 28)), list(range(30, 40)), [7] + span + [8, 9, 11]]
  ids, mask = left_pad(rows)
  grid = np.stack([GRID, GRID]).astype(np.int32)
  spg = np.array([1.0, 0.5], np.float32)
  pixels = rng.randn(int(grid.prod(-1).sum()), CFG.vision.patch_dim).astype(np.float32)
  pos, nxt = get_rope_index(ids, mask, None, grid, spg, image_token_id=CFG.image_token_id,
                            video_token_id=v, spatial_merge_size=CFG.vision.spatial_merge_size,
                            tokens_per_second=CFG.vision.tokens_per_second)
  return dict(input_ids=ids, attention_mask=mask, position_ids=pos,
              next_position=nxt.astype(np.int32), example_mask=np.ones(4, np.int32),
              pixel_values_videos=pixels, video_grid_thw=grid, second_per_grid_ts=spg,
              pixel_values=np.zeros((0, CFG.vision.patch_dim), np.float32),
              image_grid_thw=np.zeros((0, 3), np.int32),
              data_type=np.array(["video", "text", "text", "video"], object),
              id=np.array(["a", "b", "c", "d"], object))


def flat(params) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def max_diff(a: dict, b: dict) -> float:
  assert a.keys() == b.keys()
  return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def reset(learner: Learner, host_state) -> None:
  """Puts a host copy of a train state back (steps donate the old one)."""
  learner.state = jax.device_put(host_state, learner.state_shardings)


@pytest.fixture(scope="module")
def world():
  """Model, prompts, responses and the 1-device learner (reset to `init` between runs)."""
  rng = np.random.RandomState(0)
  model = random_model()
  prompts = prompt_batch(rng)
  mesh1 = make_mesh(1, 1, 1, devices=jax.devices()[:1])
  learner = Learner(model, OPT, mesh1)
  w = dict(model=model, prompts=prompts, learner=learner, init=jax.device_get(learner.state),
           rng=rng)
  # GRPO: G responses per prompt (row 2 empty); DPO: chosen rows 0-3, rejected rows 4-7.
  w["grpo_tokens"] = rng.randint(2, 250, (4 * G, R))
  w["grpo_lengths"] = np.array([5, 3, 0, 4, 5, 2, 1, 5])
  w["dpo_tokens"] = rng.randint(2, 250, (8, R))
  w["dpo_lengths"] = np.array([4, 2, 5, 3, 5, 1, 3, 2])
  w["dpo_valid"] = np.array([1, 1, 0, 1], np.float32)
  w["grpo_seq"] = build_sequences(CFG, prompts, np.repeat(np.arange(4), G), w["grpo_tokens"],
                                  w["grpo_lengths"])
  w["dpo_seq"] = build_sequences(CFG, prompts, np.tile(np.arange(4), 2), w["dpo_tokens"],
                                 w["dpo_lengths"])
  # Old/reference log-probs near the current policy: some ratios clip, some do not.
  logp = np.asarray(learner.evaluate(SequenceLogprobs(), w["grpo_seq"]))
  w["logp0"] = logp
  mask = w["grpo_seq"].loss_mask
  w["old_logp"] = ((logp + 0.3 * rng.randn(*logp.shape)) * mask).astype(np.float32)
  w["ref_logp"] = ((logp + 0.3 * rng.randn(*logp.shape)) * mask).astype(np.float32)
  w["advantages"] = rng.randn(4 * G).astype(np.float32)
  dpo_logp = np.asarray(learner.evaluate(SequenceLogprobs(), w["dpo_seq"])).sum(-1)
  w["dpo_ref"] = (dpo_logp + rng.randn(8)).astype(np.float32)
  return w


def whole_batch(w, kind: str):
  if kind == "dpo":
    return DPOBatch(sequences=w["dpo_seq"], ref_logp=w["dpo_ref"], valid=w["dpo_valid"])
  return GRPOBatch(sequences=w["grpo_seq"], old_logp=w["old_logp"],
                   advantages=w["advantages"], ref_logp=w["ref_logp"])


def part_batch(w, kind: str, order: list[int], live: int = 2):
  """Prompt rows `order` (via select_prompts, reordered); only the first `live` carry
  responses, the rest are padding (empty GRPO responses, invalid DPO pairs)."""
  prompts = select_prompts(w["prompts"], order)
  order = np.asarray(order)
  if kind == "dpo":
    idx = np.concatenate([order, order + 4])
    valid = w["dpo_valid"][order] * (np.arange(4) < live)
    seq = build_sequences(CFG, prompts, np.tile(np.arange(4), 2), w["dpo_tokens"][idx],
                          w["dpo_lengths"][idx])
    return DPOBatch(sequences=seq, ref_logp=w["dpo_ref"][idx], valid=valid)
  idx = (order[:, None] * G + np.arange(G)).reshape(-1)
  lengths = w["grpo_lengths"][idx] * (np.arange(4 * G) < live * G)
  seq = build_sequences(CFG, prompts, np.repeat(np.arange(4), G), w["grpo_tokens"][idx],
                        lengths)
  return GRPOBatch(sequences=seq, old_logp=w["old_logp"][idx], advantages=w["advantages"][idx],
                   ref_logp=w["ref_logp"][idx])


@pytest.fixture(scope="module")
def reference(world):
  """Per objective, lazily: the 1-device learner's two whole-batch steps (loss, params) and
  its one accumulated step over the two parts."""
  cache = {}

  def get(name: str):
    if name not in cache:
      learner, kind = world["learner"], name.split("-")[0]
      obj = OBJECTIVES[name]
      reset(learner, world["init"])
      steps, weights = [], []
      for _ in range(2):
        metrics = learner.step(obj, [whole_batch(world, kind)])
        steps.append((metrics["loss"], flat(learner.state.params)))
        weights.append(metrics["loss_weight"])
      reset(learner, world["init"])
      parts = [part_batch(world, kind, p) for p in PARTS]
      metrics = learner.step(obj, parts)
      cache[name] = dict(steps=steps, parts=(metrics["loss"], flat(learner.state.params)),
                         weights=(weights[0], metrics["loss_weight"]))
      reset(learner, world["init"])
    return cache[name]
  return get


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_accumulated_step_equals_one_big_batch(world, reference, name):
  """The parts' weights differ (GRPO 3 + 4 rows or 12 + 13 tokens, DPO 2 + 1 valid pairs), so
  averaging per-part means would not match."""
  ref = reference(name)
  (loss, params), (acc_loss, acc_params) = ref["steps"][0], ref["parts"]
  whole_weight, parts_weight = ref["weights"]
  assert whole_weight == parts_weight == {"grpo-seq": 7, "grpo-token": 25, "dpo": 3}[name]
  assert abs(loss - acc_loss) <= TOL
  assert max_diff(params, acc_params) <= TOL
  moved = max_diff(params, flat(world["init"].params))
  assert moved > 100 * TOL  # the update is far larger than the tolerance


def test_sharded_steps_equal_one_device(world, reference):
  """Two AdamW steps on fsdp=4 x tensor=2 equal the 1-device steps, for GRPO and DPO.

  (A data=2 x fsdp=4 mesh would cost two more compilations, a sixth of this file's time.)
  """
  learner = Learner(world["model"], OPT, make_mesh(1, 4, 2))
  kernel = learner.state.params["layers"][0]["self_attn"]["q_proj"]["kernel"].get_value()
  assert len(kernel.sharding.device_set) == 8
  init = jax.device_get(learner.state)
  for name in ("grpo-seq", "dpo"):
    reset(learner, init)
    for loss_ref, params_ref in reference(name)["steps"]:
      loss = learner.step(OBJECTIVES[name], [whole_batch(world, name.split("-")[0])])["loss"]
      assert abs(loss - loss_ref) <= TOL, name
      assert max_diff(flat(learner.state.params), params_ref) <= TOL, name


def _visual(tree) -> dict:
  return {k: v for k, v in flat(tree).items() if k.startswith("['visual']")}


def _paths(tree) -> list[str]:
  return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def test_frozen_vision_tower(world):
  model, learner = world["model"], world["learner"]
  before = _visual(nnx.state(model, nnx.Param))
  assert len(before) > 10
  assert not _visual(learner.state.params)
  assert not any("visual" in p for p in _paths(learner.state.opt_state))
  obj, batch = OBJECTIVES["grpo-seq"], whole_batch(world, "grpo")
  reset(learner, world["init"])
  learner.step(obj, [batch])
  assert max_diff(before, _visual(nnx.state(learner.model(), nnx.Param))) == 0.0
  assert max_diff(flat(learner.state.params), flat(world["init"].params)) > 0
  reset(learner, world["init"])

  free = Learner(model, OPT, learner.mesh, frozen=())
  assert any("visual" in p for p in _paths(free.state.opt_state))
  free.step(obj, [batch])
  changed = _visual(free.state.params)
  assert changed.keys() == before.keys()
  assert all(np.abs(changed[k] - before[k]).max() > 1e-4 for k in before)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  x = logits.astype(np.float64)
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def forward():
  """model.forward (full logits over every column) under a plain jit, compiled once."""
  return nnx.jit(lambda model, inputs: model.forward(inputs))


def test_evaluate_aligns_response_positions(world, forward):
  """Token j of a response is predicted from column prompt_width + j - 1."""
  seq = world["grpo_seq"]
  lp = _log_softmax(np.asarray(forward(world["model"], seq.inputs)))
  w = seq.prompt_width
  want = np.zeros(seq.targets.shape)
  for i in range(seq.targets.shape[0]):
    for j in range(int(world["grpo_lengths"][i])):
      want[i, j] = lp[i, w + j - 1, seq.targets[i, j]]
  np.testing.assert_allclose(world["logp0"], want, atol=TOL, rtol=0)
  assert np.all(world["logp0"][seq.loss_mask == 0] == 0)


def test_shared_prompt_sequences_match_full_forward(world, forward):
  """G=3 responses share the left-padded video prompt 3 (plus 5 rows of other prompts): each
  row's logits equal its full prompt + response through the transformers-style call, which
  encodes a video per row and computes the rope positions itself."""
  model, prompts = world["model"], world["prompts"]
  owner = np.array([3, 3, 3, 0, 1, 2, 1, 0])
  tokens = world["rng"].randint(2, 250, (8, R))
  lengths = np.array([5, 2, 4, 3, 5, 1, 4, 5])
  seq = build_sequences(CFG, prompts, owner, tokens, lengths)
  videos = int(GRID.prod()) // 4
  assert np.all(seq.inputs.feature_index[:3] == seq.inputs.feature_index[0])
  assert seq.inputs.feature_index[0].max() == 2 * videos - 1   # the batch's second video
  got = np.asarray(forward(model, seq.inputs))

  ids, mask = prompts["input_ids"], prompts["attention_mask"]
  rows = [list(ids[o][mask[o] > 0]) + list(tokens[i, :lengths[i]]) for i, o in enumerate(owner)]
  full_ids, full_mask = left_pad(rows)
  full = full_ids.shape[1]
  video_of = {0: 0, 3: 1}                # prompt row -> its video in the prompt batch
  vids = [video_of[o] for o in owner if o in video_of]
  pv = prompts["pixel_values_videos"].reshape(2, -1, CFG.vision.patch_dim)
  want = np.asarray(model(full_ids, full_mask, pixel_values_videos=np.concatenate(pv[vids]),
                          video_grid_thw=prompts["video_grid_thw"][vids],
                          second_per_grid_ts=prompts["second_per_grid_ts"][vids]))
  w = seq.prompt_width
  for i, o in enumerate(owner):
    n = int(mask[o].sum())
    cols = np.r_[w - n:w + lengths[i]]
    np.testing.assert_allclose(got[i, cols], want[i, full - len(rows[i]):], atol=TOL, rtol=0,
                               err_msg=f"row {i}")


def test_branch_rows_match_one_response_per_row(world):
  """DPO's prompt sharing: chosen and rejected in one row (the prompt once, each response masked
  from the other) give the per-token log-probs and the DPO loss of one row per response."""
  prompts, learner = world["prompts"], world["learner"]
  reset(learner, world["init"])
  owner = np.tile(np.arange(4), 2)
  shared = build_sequences(CFG, prompts, owner, world["dpo_tokens"], world["dpo_lengths"],
                           branches=2)
  assert shared.inputs.input_ids.shape == (4, world["dpo_seq"].inputs.input_ids.shape[1] + R)
  got = np.asarray(learner.evaluate(SequenceLogprobs(), shared))
  want = np.asarray(learner.evaluate(SequenceLogprobs(), world["dpo_seq"]))
  assert np.abs(want).max() > 1.0
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
  batches = [DPOBatch(sequences=s, ref_logp=world["dpo_ref"], valid=world["dpo_valid"])
             for s in (shared, world["dpo_seq"])]
  loss = [float(learner.evaluate(OBJECTIVES["dpo"], b).loss_sum) for b in batches]
  np.testing.assert_allclose(loss[0], loss[1], atol=TOL, rtol=0)
  with pytest.raises(ValueError, match="branch-major"):
    build_sequences(CFG, prompts, np.repeat(np.arange(4), 2), world["dpo_tokens"],
                    world["dpo_lengths"], branches=2)
