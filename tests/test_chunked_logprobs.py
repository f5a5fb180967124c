"""Chunked sequence log-probs (objective `logprob_chunk`): the LM head runs over a few response
positions at a time, recomputed per chunk in the backward. Log-probs, entropies, the GRPO, DPO
and SFT losses and their gradients equal the one-shot path, for chunk sizes that do and do not
divide the response width, and no (rows, R, vocab) array exists in the chunked programs.

The model is the tiny Qwen2.5-VL (fp32) with random weights; one video row keeps the vision
path (and the feature gather) in the program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from veripo_jax.models.qwen2_5_vl import Qwen25VL, get_preset, get_rope_index
from veripo_jax.parallel.sharding import make_mesh
from veripo_jax.rl.losses import chunked_token_logprobs, token_logprobs
from veripo_jax.rl.objectives import (DPOBatch, DPOObjective, GRPOBatch, GRPOObjective,
                                      SequenceLogprobs, SFTObjective)
from veripo_jax.rl.sequences import build_sequences, response_logprobs
from veripo_jax.train.learner import Learner
from veripo_jax.train.optimizer import OptimizerConfig

from hf_reference import left_pad

pytestmark = pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")

CFG = get_preset("tiny")
V = CFG.text.vocab_size
R = 7                           # response width: chunks of 2, 3 and 4 leave a remainder
G = 2
TOL = 1e-5


def random_model(seed: int = 0) -> Qwen25VL:
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Qwen25VL(CFG, rngs=nnx.Rngs(0))))
  rng = np.random.RandomState(seed)

  def fill(path, x):
    base = 1.0 if "norm" in jax.tree_util.keystr(path) else 0.0
    return (base + 0.1 * rng.randn(*x.shape)).astype(np.float32)
  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def prompt_batch(rng: np.random.RandomState) -> dict:
  """Rows 0 with a video, rows 1-3 text only; left-padded collator fields."""
  grid = np.array([[2, 4, 4]], np.int32)
  span = ([CFG.vision_start_token_id] + [CFG.video_token_id] * 8 + [CFG.vision_end_token_id])
  ids, mask = left_pad([[3, 4] + span + [5], list(range(10, 22)), [30, 31, 32], [7, 8, 9, 11]])
  spg = np.array([1.0], np.float32)
  pos, nxt = get_rope_index(ids, mask, None, grid, spg, image_token_id=CFG.image_token_id,
                            video_token_id=CFG.video_token_id,
                            spatial_merge_size=CFG.vision.spatial_merge_size,
                            tokens_per_second=CFG.vision.tokens_per_second)
  return dict(input_ids=ids, attention_mask=mask, position_ids=pos,
              next_position=nxt.astype(np.int32), example_mask=np.ones(4, np.int32),
              pixel_values_videos=rng.randn(32, CFG.vision.patch_dim).astype(np.float32),
              video_grid_thw=grid, second_per_grid_ts=spg,
              pixel_values=np.zeros((0, CFG.vision.patch_dim), np.float32),
              image_grid_thw=np.zeros((0, 3), np.int32),
              data_type=np.array(["video", "text", "text", "text"], object),
              id=np.array(["a", "b", "c", "d"], object))


@pytest.fixture(scope="module")
def world():
  rng = np.random.RandomState(0)
  model = random_model()
  prompts = prompt_batch(rng)
  tokens = rng.randint(2, V, (4 * G, R))
  lengths = np.array([7, 3, 0, 6, 7, 2, 1, 5])
  grpo_seq = build_sequences(CFG, prompts, np.repeat(np.arange(4), G), tokens, lengths)
  # DPO with shared prompts: a pair's chosen and rejected response in one row (branches=2).
  dpo_seq = build_sequences(CFG, prompts, np.tile(np.arange(4), 2), tokens, lengths, branches=2)
  logp = np.asarray(jax.jit(lambda m, s: response_logprobs(m, s)[0])(model, grpo_seq))
  mask = grpo_seq.loss_mask
  grpo = GRPOBatch(sequences=grpo_seq,
                   old_logp=((logp + 0.3 * rng.randn(*logp.shape)) * mask).astype(np.float32),
                   advantages=rng.randn(4 * G).astype(np.float32),
                   ref_logp=((logp + 0.3 * rng.randn(*logp.shape)) * mask).astype(np.float32))
  dpo = DPOBatch(sequences=dpo_seq, ref_logp=rng.randn(8).astype(np.float32) - 20.0,
                 valid=np.array([1, 1, 0, 1], np.float32),
                 nll_from=np.array([1, 0, 0, 2], np.int32))
  return dict(model=model, grpo=grpo, dpo=dpo)


# --- the pure function --------------------------------------------------------------------------

@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 6, 7, 9])
def test_chunked_token_logprobs_equal_one_shot(chunk):
  """Values and gradients (through logp and entropy, to h and the head weight) for chunks that
  divide T = 6 or 7, leave a remainder, equal T or exceed it."""
  rng = np.random.RandomState(chunk)
  for t in (6, 7):
    h = jnp.asarray(rng.randn(3, t, 5), jnp.float32)
    w = jnp.asarray(rng.randn(5, 13), jnp.float32)
    targets = jnp.asarray(rng.randint(0, 13, (3, t)))
    a, b = jnp.asarray(rng.randn(3, t), jnp.float32), jnp.asarray(rng.randn(3, t), jnp.float32)

    def loss(h, w, c):
      logp, ent = chunked_token_logprobs(lambda x: x @ w, h, targets, c)
      return jnp.sum(a * logp + b * ent), (logp, ent)

    (v0, (lp0, e0)), g0 = jax.value_and_grad(loss, (0, 1), has_aux=True)(h, w, 0)
    (v1, (lp1, e1)), g1 = jax.value_and_grad(loss, (0, 1), has_aux=True)(h, w, chunk)
    want = token_logprobs(h @ w, targets)
    np.testing.assert_allclose(lp0, want[0], atol=TOL, rtol=0)
    for x, y in ((lp0, lp1), (e0, e1), (v0, v1), (g0[0], g1[0]), (g0[1], g1[1])):
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=TOL, rtol=TOL)


# --- the model: log-probs, losses, gradients ---------------------------------------------------

def loss_and_grads(model, objective, batch):
  graphdef, state = nnx.split(model)

  def f(s):
    terms = objective(nnx.merge(graphdef, s), batch)
    return terms.loss_sum, terms
  (value, terms), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(state)
  return float(value), jax.device_get(terms.metrics), jax.device_get(grads)


def assert_trees_close(a, b, tol=TOL):
  for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=tol, rtol=tol,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("chunk", [2, 3, 4])
def test_response_logprobs_and_entropy(world, chunk):
  """Per-token log-probs and entropies of one-row-per-response and shared-prompt sequences."""
  run = jax.jit(response_logprobs, static_argnames=("chunk",))
  for seq in (world["grpo"].sequences, world["dpo"].sequences):
    want = run(world["model"], seq, chunk=0)
    got = run(world["model"], seq, chunk=chunk)
    for x, y in zip(want, got):
      assert x.shape == (len(seq.targets), R)
      np.testing.assert_allclose(np.asarray(y), np.asarray(x), atol=TOL, rtol=TOL)
  want = jax.jit(SequenceLogprobs())(world["model"], world["grpo"].sequences)
  got = jax.jit(SequenceLogprobs(logprob_chunk=chunk))(world["model"], world["grpo"].sequences)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=TOL, rtol=TOL)


@pytest.mark.parametrize("kind,chunk", [("grpo", 3), ("grpo", 7), ("dpo", 2), ("sft", 4)])
def test_losses_and_gradients(world, kind, chunk):
  """GRPO (k3 KL, entropy metric), DPO (RPO NLL from a per-pair token) and SFT losses, metrics
  and every parameter's gradient equal the unchunked path's (chunk 7 = R: the one-shot path)."""
  objective = {"grpo": GRPOObjective(kl_coef=0.05, clip_eps_high=0.28),
               "dpo": DPOObjective(beta=0.5, nll_coef=1.0, remat=True),
               "sft": SFTObjective()}[kind]
  batch = {"grpo": world["grpo"], "dpo": world["dpo"],
           "sft": world["grpo"].sequences}[kind]
  value0, metrics0, grads0 = loss_and_grads(world["model"], objective, batch)
  chunked = objective.__class__(**{**objective.__dict__, "logprob_chunk": chunk})
  value1, metrics1, grads1 = loss_and_grads(world["model"], chunked, batch)
  assert abs(value1 - value0) <= TOL * max(1.0, abs(value0))
  assert_trees_close(metrics0, metrics1)
  assert_trees_close(grads0, grads1)
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads0)) > 1e-3


def test_sharded_chunked_step_equals_one_device_unchunked(world):
  """The chunk scan under fsdp=4 x tensor=2 activation constraints: the accumulated GRPO
  gradients equal the one-device unchunked ones."""
  opt = OptimizerConfig(learning_rate=1e-2, schedule="constant", warmup_ratio=0.0)
  one = Learner(world["model"], opt, make_mesh(1, 1, 1, devices=jax.devices()[:1]))
  eight = Learner(world["model"], opt, make_mesh(1, 4, 2))
  objective = GRPOObjective(kl_coef=0.05)
  want = one.accumulate(objective, one.put_batch(world["grpo"]))
  got = eight.accumulate(GRPOObjective(kl_coef=0.05, logprob_chunk=3),
                         eight.put_batch(world["grpo"]))
  assert abs(float(got.loss_sum) - float(want.loss_sum)) <= TOL
  assert_trees_close(jax.device_get(want.grads), jax.device_get(got.grads))


# --- no (rows, R, vocab) array -------------------------------------------------------------------

def vocab_arrays(jaxpr, out=None) -> list[tuple[int, ...]]:
  """Shapes of every value with a last axis of vocab size in `jaxpr` and its sub-jaxprs (scan
  and remat bodies, pjit calls, ...), the head weight (D, V) and its gradient excepted."""
  out = [] if out is None else out
  weight = {(CFG.text.hidden_size, V), (V, CFG.text.hidden_size), (V,)}
  for eqn in jaxpr.eqns:
    for var in list(eqn.invars) + list(eqn.outvars):
      shape = tuple(getattr(getattr(var, "aval", None), "shape", ()))
      if shape and shape[-1] == V and shape not in weight:
        out.append(shape)
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          vocab_arrays(sub.jaxpr, out)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          vocab_arrays(sub, out)
  return out


@pytest.mark.parametrize("kind", ["grpo", "dpo"])
def test_no_full_logits_in_the_chunked_program(world, kind):
  """Forward and backward of the chunked objective: the largest array with a vocab axis is one
  chunk's logits (rows, C, V) (at most rows*C*V elements), where the one-shot program forms
  (rows, R, V); stacked per-chunk residuals (chunks, rows, C, V) would fail too."""
  chunk = 2
  objective = {"grpo": GRPOObjective(kl_coef=0.05), "dpo": DPOObjective(nll_coef=1.0)}[kind]
  batch = world[kind]
  rows = len(batch.sequences.targets)
  graphdef, state = nnx.split(world["model"])

  def program(obj):
    grad = jax.grad(lambda s: obj(nnx.merge(graphdef, s), batch).loss_sum)
    return jax.make_jaxpr(grad)(state).jaxpr

  one_shot = vocab_arrays(program(objective))
  assert max(map(np.prod, one_shot)) >= rows * R * V        # the check sees the full logits
  chunked = vocab_arrays(program(objective.__class__(
      **{**objective.__dict__, "logprob_chunk": chunk})))
  assert chunked, "the chunked program has no logits at all?"
  assert max(map(np.prod, chunked)) <= rows * chunk * V, sorted(set(chunked))
  assert not [s for s in chunked if R in s and s[-1] == V], sorted(set(chunked))
  # The gradient-free pass (old/reference log-probs) too.
  fwd = jax.make_jaxpr(lambda s: SequenceLogprobs(logprob_chunk=chunk)(
      nnx.merge(graphdef, s), batch.sequences))(state).jaxpr
  assert max(map(np.prod, vocab_arrays(fwd))) <= rows * chunk * V
