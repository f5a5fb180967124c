"""Attention kernels (`veripo_jax.models.attention`): splash and cuDNN against the XLA path.

Splash runs here in Pallas interpret mode ("splash_interpret": the TPU kernel's code run by the
XLA interpreter on CPU). It must equal XLA, outputs and gradients (fp32; atol/rtol 2e-5 on
outputs, 1e-4 on gradients), on every query row that sees a key, for each mask kind the models
use: causal + padding (+ GQA), prompt-shared branches, vision key padding, a prefill's dense
mask with fully masked rows, and under a sharded mesh. cuDNN cannot run on CPU: the dispatch
table is checked, and everything around the cuDNN call (padding, the mask it gets, no fully
masked row) is run with jax's cuDNN call replaced by its XLA implementation of the same
arguments.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from veripo_jax.models import attention as attn
from veripo_jax.models.attention import SelfAttentionMask
from veripo_jax.models.qwen2_5_vl import Qwen25VL
from veripo_jax.models.qwen2_5_vl.config import Qwen25VLConfig, TextConfig
from veripo_jax.models.qwen2_5_vl.model import ModelInputs
from veripo_jax.parallel.sharding import activation_sharding, make_mesh

OUT_TOL = dict(atol=2e-5, rtol=2e-5)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)


# The dense mask the model used before kernels (the test's reference for `mask.dense()`).
def attention_mask_4d(inputs: ModelInputs) -> jax.Array:
  """(B, 1, L, L) bool: causal, real keys only, and within-branch when `inputs.branch` is set."""
  l = inputs.input_ids.shape[1]
  causal = jnp.tril(jnp.ones((l, l), bool))
  mask = inputs.attention_mask[:, None, :].astype(bool) & causal[None]
  if inputs.branch is not None:
    keys = inputs.branch[:, None, :]
    mask = mask & ((keys == 0) | (keys == inputs.branch[:, :, None]))
  return mask[:, None]


def qkv(b, tq, tk, h, kv, d, seed=0, dtype=jnp.float32):
  r = np.random.RandomState(seed)
  return tuple(jnp.asarray(r.randn(*shape), dtype)
               for shape in ((b, tq, h, d), (b, tk, kv, d), (b, tk, kv, d)))


def padded_valid(b, length, left, right):
  valid = np.ones((b, length), bool)
  for i, (lp, rp) in enumerate(zip(left, right)):
    valid[i, :lp] = False
    valid[i, length - rp:] = False
  return valid


def branch_ids(b, length, prompt, widths):
  """Prompt columns branch 0, then branches 1.. of the given widths (the rest: branch 0)."""
  out = np.zeros((b, length), np.int32)
  start = prompt
  for k, w in enumerate(widths, 1):
    out[:, start:start + w] = k
    start += w
  return out


def seen_rows(mask, b, tq, tk):
  """(B, Tq) rows that see at least one key under `mask` (the rows compared)."""
  if mask is None:
    return np.ones((b, tq), bool)
  dense = jnp.broadcast_to(attn.dense_mask(mask).astype(bool), (b, 1, tq, tk))
  return np.asarray(dense.any(-1)[:, 0])


def loss_and_grads(impl, q, k, v, mask, rows):
  w = jnp.asarray(np.random.RandomState(9).randn(*q.shape), q.dtype)
  keep = jnp.asarray(rows)[:, :, None, None]

  def loss(q, k, v):
    out = attn.attention(q, k, v, mask, impl)
    return jnp.sum(jnp.where(keep, out * w, 0.0)), out
  (value, out), grads = jax.jit(jax.value_and_grad(loss, (0, 1, 2), has_aux=True))(q, k, v)
  return value, jnp.where(keep, out, 0.0), grads


def assert_same(q, k, v, mask, impl="splash_interpret"):
  rows = seen_rows(mask, q.shape[0], q.shape[1], k.shape[1])
  assert rows.any()
  ref = loss_and_grads("xla", q, k, v, mask, rows)
  got = loss_and_grads(impl, q, k, v, mask, rows)
  np.testing.assert_allclose(got[1], ref[1], **OUT_TOL)
  np.testing.assert_allclose(got[0], ref[0], **GRAD_TOL)
  for name, g, r in zip("qkv", got[2], ref[2]):
    assert np.isfinite(np.asarray(g)).all(), name
    np.testing.assert_allclose(g, r, err_msg=f"d{name}", **GRAD_TOL)


# -------------------------------------------------------------------------------------------------
# Splash (interpret mode) against XLA.

def test_splash_causal_padding_gqa():
  # Length 200 pads to 256; row 0 left-padded (a prompt), row 1 right-padded (a response).
  q, k, v = qkv(2, 200, 200, 4, 2, 16)
  mask = SelfAttentionMask(jnp.asarray(padded_valid(2, 200, [37, 0], [0, 45])))
  assert attn.plan("splash_interpret", q.shape, k.shape, q.dtype, mask).kernel == \
      "splash_interpret"
  assert_same(q, k, v, mask)


def test_splash_prompt_shared_branches():
  valid = padded_valid(2, 200, [11, 0], [5, 30])
  valid[:, 100:104] = False                         # branch 1's right padding
  branch = branch_ids(2, 200, 60, [44, 96])
  mask = SelfAttentionMask(jnp.asarray(valid), jnp.asarray(branch))
  assert attn.mask_kind(mask) == "branch"
  # The structured mask is the model's dense one.
  inputs = ModelInputs(input_ids=np.zeros((2, 200), np.int32), attention_mask=valid,
                       position_ids=np.zeros((3, 2, 200), np.int32),
                       feature_index=np.zeros((2, 200), np.int32), branch=branch)
  np.testing.assert_array_equal(mask.dense(), attention_mask_4d(inputs))
  q, k, v = qkv(2, 200, 200, 4, 2, 16, seed=1)
  assert_same(q, k, v, mask)


def test_splash_vision_key_padding():
  # The vision tower's mask: (segments, 1, 1, Lmax) real keys of each segment; segment 2 is
  # all padding (its rows see no key: not compared, but must stay finite).
  valid = np.zeros((3, 150), bool)
  valid[0, :150] = True
  valid[1, :97] = True
  mask = jnp.asarray(valid)[:, None, None, :]
  assert attn.mask_kind(mask) == "keys"
  q, k, v = qkv(3, 150, 150, 2, 2, 16, seed=2)
  assert_same(q, k, v, mask)
  out = attn.attention(q, k, v, mask, "splash_interpret")
  assert np.isfinite(np.asarray(out)).all()


def test_splash_dense_prefill_mask_with_fully_masked_rows():
  # A prefill over a cache: 130 new tokens at slot 0 of a 256-slot cache, left padding (so the
  # first query rows see no key at all) in row 0.
  tq, s = 130, 256
  token_valid = padded_valid(2, tq, [20, 0], [0, 0])
  valid = np.zeros((2, s), bool)
  valid[:, :tq] = token_valid
  causal = np.arange(s)[None, :] <= np.arange(tq)[:, None]
  mask = jnp.asarray(valid[:, None, None, :] & causal[None, None])
  assert attn.mask_kind(mask) == "dense"
  assert not seen_rows(mask, 2, tq, s)[0, :20].any()
  q, k, v = qkv(2, tq, s, 4, 2, 16, seed=3)
  assert_same(q, k, v, mask)


@pytest.mark.parametrize("kv", [2, pytest.param(1, marks=pytest.mark.slow)])
def test_splash_under_a_sharded_mesh(kv):
  # shard_map over batch (data) and heads (tensor): 4 q heads and 2 kv heads split alike; 1 kv
  # head (the tensor axis does not divide it) is repeated to split alike.
  mesh = make_mesh(data=2, fsdp=1, tensor=2, devices=jax.devices()[:4])
  mask = SelfAttentionMask(jnp.asarray(padded_valid(2, 130, [3, 0], [0, 9])))
  with activation_sharding(mesh):
    assert_same(*qkv(2, 130, 130, 4, kv, 16, seed=4), mask)


# -------------------------------------------------------------------------------------------------
# The model: training loss and gradients, and prefill, splash against XLA.

def tiny_text(layers=2) -> Qwen25VLConfig:
  text = TextConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=layers,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                    mrope_section=(2, 3, 3))
  return Qwen25VLConfig(text=text, vision=None, pad_token_id=0, bos_token_id=0, eos_token_id=1)


@pytest.mark.parametrize("layers,scan", [(1, False), pytest.param(2, True, marks=pytest.mark.slow)])
def test_model_loss_and_grads_prompt_shared_rows(layers, scan):
  cfg = tiny_text(layers)
  models = {impl: Qwen25VL(cfg, rngs=nnx.Rngs(3), attention_implementation=impl,
                           scan_layers=scan)
            for impl in ("xla", "splash_interpret")}
  length = 150
  valid = padded_valid(2, length, [9, 0], [0, 12])
  branch = branch_ids(2, length, 50, [40, 60])
  r = np.random.RandomState(0)
  inputs = ModelInputs(input_ids=r.randint(2, 64, (2, length)).astype(np.int32),
                       attention_mask=valid,
                       position_ids=np.broadcast_to(np.arange(length, dtype=np.int32),
                                                    (3, 2, length)).copy(),
                       feature_index=np.full((2, length), -1, np.int32), branch=branch)
  targets = jnp.asarray(r.randint(0, 64, (2, length)))
  weight = jnp.asarray(valid, jnp.float32)

  @nnx.jit
  def loss_and_grads(model):
    def loss(model):
      logp = jax.nn.log_softmax(model.forward(inputs), -1)
      return -jnp.sum(jnp.take_along_axis(logp, targets[..., None], -1)[..., 0] * weight)
    return nnx.value_and_grad(loss)(model)
  (ref_loss, ref_grads), (loss, grads) = (loss_and_grads(models[i]) for i in models)
  np.testing.assert_allclose(loss, ref_loss, **GRAD_TOL)
  for (path, g), (_, r_) in zip(nnx.to_flat_state(grads), nnx.to_flat_state(ref_grads)):
    np.testing.assert_allclose(g.get_value(), r_.get_value(), err_msg=str(path), **GRAD_TOL)


def test_model_prefill_logits():
  cfg = tiny_text(layers=1)
  length = 140
  ids, valid = np.zeros((2, length), np.int32), padded_valid(2, length, [25, 0], [0, 0])
  ids[valid] = np.random.RandomState(1).randint(2, 64, valid.sum())
  out = {}
  for impl in ("xla", "splash_interpret"):
    model = Qwen25VL(cfg, rngs=nnx.Rngs(5), attention_implementation=impl)
    inputs, _ = model.prepare({"input_ids": ids, "attention_mask": valid})
    out[impl] = nnx.jit(lambda m, x: m.prefill(x, m.init_cache(2, 256))[0])(model, inputs)
  np.testing.assert_allclose(out["splash_interpret"], out["xla"], **OUT_TOL)


# -------------------------------------------------------------------------------------------------
# Names, platforms, dispatch.

def test_names_and_platforms():
  assert attn.check_implementation(None) == "auto"
  assert [attn.resolve_implementation("auto", p) for p in ("tpu", "gpu", "cpu")] == \
      ["splash", "cudnn", "xla"]
  assert attn.resolve_implementation(None, "cpu") == "xla"
  with pytest.raises(ValueError, match=r"attention_implementation .*model\.attention.*'flash'"):
    attn.check_implementation("flash")
  with pytest.raises(ValueError, match="'splash' needs a TPU"):
    attn.resolve_implementation("splash", "cpu")
  with pytest.raises(ValueError, match="'cudnn' needs an NVIDIA GPU"):
    attn.resolve_implementation("cudnn", "tpu")
  with pytest.raises(ValueError, match="attention_implementation"):
    Qwen25VL(tiny_text(), attention_implementation="flash")


def test_dispatch_table():
  seg = SelfAttentionMask(jnp.ones((2, 256), bool))
  branch = SelfAttentionMask(jnp.ones((2, 256), bool), jnp.zeros((2, 256), jnp.int32))
  keys = jnp.ones((2, 1, 1, 256), bool)
  dense = jnp.ones((2, 1, 256, 512), bool)
  bf16, f32 = jnp.bfloat16, jnp.float32

  def kernel(impl, mask, dtype=bf16, tq=256, tk=256, d=128, platform=None):
    platform = platform or {"cudnn": "gpu", "splash": "tpu"}.get(impl, "cpu")
    return attn.plan(impl, (2, tq, 8, d), (2, tk, 2, d), dtype, mask, platform).kernel

  for mask, tk in ((seg, 256), (branch, 256), (keys, 256), (dense, 512), (None, 256)):
    assert kernel("splash", mask, tk=tk) == "splash"
    assert kernel("splash", mask, f32, tk=tk) == "splash"          # splash takes fp32 too
    assert kernel("cudnn", mask, tk=tk) == "cudnn"
    assert kernel("cudnn", mask, jnp.float16, tk=tk) == "cudnn"
    assert kernel("cudnn", mask, f32, tk=tk) == "xla"              # cuDNN: bf16 / fp16 only
    assert kernel("xla", mask, tk=tk) == "xla"
  assert kernel("auto", seg, platform="tpu") == "splash"
  assert kernel("auto", seg, platform="gpu") == "cudnn"
  assert kernel("auto", seg, platform="cpu") == "xla"
  assert kernel("cudnn", seg, d=80) == "cudnn"                     # the vision head dim
  assert kernel("cudnn", seg, d=256) == "xla"                      # head dim over 128
  assert kernel("cudnn", seg, d=100) == "xla"                      # not a multiple of 8
  decode = jnp.ones((2, 1, 1, 512), bool)
  for impl in ("splash", "cudnn"):
    assert kernel(impl, decode, tq=1, tk=512) == "xla"             # one query row: decode
    assert kernel(impl, keys[:, :, :, :64], tq=64, tk=64) == "xla"  # a small vision window
    assert kernel(impl, jnp.ones((2, 8, 256, 256), bool)) == "xla"  # a per-head mask
  p = attn.plan("cudnn", (2, 256, 8, 128), (2, 256, 2, 128), f32, seg, "gpu")
  assert "bf16/fp16" in p.reason
  with pytest.raises(ValueError, match="SelfAttentionMask over 256 tokens"):
    kernel("splash", seg, tq=256, tk=512)


@pytest.mark.parametrize("kind", ["segments", "branch", "keys", "dense", "none"])
def test_cudnn_call_around_the_kernel(kind, monkeypatch):
  """What cuDNN is given: lengths padded to 128, a full (B, 1, Tq, Tk) boolean mask with a
  visible key in every row, is_causal for the decoder's masks; run through XLA it gives the
  XLA path's result (fp32 here: the cuDNN-only dtype check is the plan's, tested above)."""
  b, t, s = 2, 150, 150
  valid = padded_valid(b, t, [7, 0], [0, 21])
  masks = {
      "segments": SelfAttentionMask(jnp.asarray(valid)),
      "branch": SelfAttentionMask(jnp.asarray(valid), jnp.asarray(branch_ids(b, t, 40, [50, 60]))),
      "keys": jnp.asarray(valid)[:, None, None, :],
      "dense": jnp.asarray(valid[:, None, None, :] & np.tril(np.ones((t, s), bool))),
      "none": None,
  }
  mask = masks[kind]
  calls = []
  xla_attention = jax.nn.dot_product_attention

  def fake(q, k, v, *, mask=None, is_causal=False, implementation=None):
    assert implementation == "cudnn"
    assert q.shape[1] % 128 == 0 and k.shape[1] % 128 == 0
    assert mask is not None and mask.dtype == bool
    assert mask.shape == (b, 1, q.shape[1], k.shape[1])
    calls.append(is_causal)
    out = xla_attention(q, k, v, mask=mask, is_causal=is_causal, implementation="xla")
    return jnp.where(mask.any(-1).all(), out, jnp.nan)     # NaN if a row sees no key

  monkeypatch.setattr(jax.nn, "dot_product_attention", fake)
  q, k, v = qkv(b, t, s, 4, 2, 16, seed=6)
  rows = seen_rows(mask, b, t, s)[:, :, None, None]
  got = jax.jit(lambda q, k, v: attn._cudnn(q, k, v, mask, attn.mask_kind(mask)))(q, k, v)
  monkeypatch.setattr(jax.nn, "dot_product_attention", xla_attention)
  ref = jax.jit(lambda q, k, v: attn.attention(q, k, v, mask, "xla"))(q, k, v)
  np.testing.assert_allclose(np.where(rows, got, 0), np.where(rows, ref, 0), **OUT_TOL)
  assert calls == [kind in ("segments", "branch")]
