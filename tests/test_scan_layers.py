"""Scanned decoder layers (`scan_layers=True`): the same model as the per-layer loop.

Forward logits, greedy generation (the batch cache and the serving engine's per-slot cache),
loss and gradients under every remat policy, checkpoint load/save, sharding and errors.
"""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from hf_reference import IMAGE, hf_inputs, left_pad, random_image, span
from veripo_jax.inference import generate
from veripo_jax.models.qwen2_5_vl import Qwen25VL, load_hf_checkpoint, save_hf_checkpoint
from veripo_jax.parallel.remat import REMAT_POLICIES
from veripo_jax.parallel.sharding import make_mesh, state_shardings


def vl_batch():
  pv, grid = random_image(np.random.RandomState(5), 56, 56)
  ids, mask = left_pad([[3, 4] + span(IMAGE, grid) + [5, 6, 7], [8, 9, 10, 11, 12]])
  return {"input_ids": ids, "attention_mask": mask, "pixel_values": pv, "image_grid_thw": grid}


@pytest.fixture(scope="module")
def scanned(tiny_hf):
  return load_hf_checkpoint(tiny_hf[1], scan_layers=True)


def flat_params(model) -> dict:
  return {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def unstack(flat: dict, like: dict) -> dict:
  """A scanned model's flat tree with the paths of an unscanned one (`like`)."""
  return {p: flat[("layers",) + p[2:]][p[1]] if p[0] == "layers" else flat[p] for p in like}


def test_loaded_params_are_the_stacked_layers(tiny_model, scanned):
  ref, got = flat_params(tiny_model), flat_params(scanned)
  kernel = scanned.layers.self_attn.q_proj.kernel
  assert kernel.get_value().shape == (2, 64, 64)
  assert kernel.get_metadata()["logical_axes"] == ("layers", "embed", "heads")
  assert len(got) == len(ref) - len([p for p in ref if p[0] == "layers"]) // 2
  for p, value in unstack(got, ref).items():
    np.testing.assert_array_equal(value, ref[p], err_msg=str(p))


def test_fresh_init_is_the_unscanned_init_stacked(tiny_hf, tiny_model):
  cfg = tiny_model.config.replace(vision=None)        # the decoder is what differs
  ref = flat_params(Qwen25VL(cfg, rngs=nnx.Rngs(7)))
  got = flat_params(Qwen25VL(cfg, rngs=nnx.Rngs(7), scan_layers=True))
  for p, value in unstack(got, ref).items():
    np.testing.assert_array_equal(value, ref[p], err_msg=str(p))


def test_forward_logits_match(tiny_model, scanned):
  batch = vl_batch()
  ref = np.asarray(tiny_model(**batch))
  got = np.asarray(scanned(**batch))
  assert np.abs(ref).max() > 0.1
  np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def text_batch():
  ids, mask = left_pad([[3, 4, 5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15]])
  return {"input_ids": ids, "attention_mask": mask}


def test_greedy_generate_matches(tiny_model, scanned):
  """Prefill, the cache forked for 2 samples, then the decode loop (the vision path is the
  forward test's)."""
  kw = dict(num_samples=2, eos_token_ids=(1,), pad_token_id=0)
  ref = generate(tiny_model, text_batch(), 12, **kw)
  got = generate(scanned, text_batch(), 12, **kw)
  assert np.asarray(ref.lengths).max() >= 8
  np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(ref.tokens))
  np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(ref.lengths))
  np.testing.assert_allclose(np.asarray(got.logprobs), np.asarray(ref.logprobs), atol=1e-5)


def test_cache_layout(tiny_model, scanned):
  cache = scanned.init_cache(3, 10)
  assert cache.stacked and cache.keys.shape == (3, 2, 2, 16, 10)
  assert cache.values.shape == (3, 2, 2, 10, 16)
  assert cache.repeat(2).keys.shape == (6, 2, 2, 16, 10)
  assert cache.per_slot().expand().squeeze().keys.shape == cache.keys.shape
  axes = scanned.cache_axes(per_slot=True)
  assert axes.keys == ("batch", "layers", "kv_heads", "head_dim", "cache_length")
  is_axes = lambda x: isinstance(x, tuple) and all(isinstance(a, str) for a in x)
  assert (jax.tree.structure(axes, is_leaf=is_axes) ==
          jax.tree.structure(cache.per_slot()))
  assert not tiny_model.init_cache(3, 10).stacked
  with pytest.raises(ValueError, match="stacked KV cache given to a model with scan_layers=False"):
    tiny_model.extend(jnp.zeros((3, 1, 64)), jnp.zeros((3, 3, 1), jnp.int32),
                      jnp.ones((3, 1), bool), cache)


def test_serving_engine_slots_match(tiny_model, scanned):
  """The engine's per-slot cache (vmapped rows, insert at a slot) with stacked layers."""
  from veripo_jax.serving.engine import QwenEngine

  def run(model):
    eng = QwenEngine(model, max_concurrent_decodes=2, max_prefill_length=16,
                     max_decode_length=8, stop_token_ids=(1,))
    params = eng.load_params()
    state = eng.init_decode_state()
    for slot, prompt in ((1, [5, 6, 7, 8]), (0, [9, 10, 11, 12, 13, 14, 15])):
      prompt = np.array(prompt + [0] * (16 - len(prompt)))
      state = eng.insert(eng.prefill(params=params, padded_tokens=prompt,
                                     true_length=int((prompt > 0).sum())), state, slot)
    tokens = []
    for _ in range(6):
      state, result = eng.generate(params, state)
      tokens.append(np.asarray(result.data)[:, 0])
    return np.stack(tokens)

  ref = run(tiny_model)
  np.testing.assert_array_equal(run(scanned), ref)
  assert len(np.unique(ref)) > 2


# How the jaxpr prints each policy that saves matmul outputs.
SAVED_DOTS = {"dots_saveable": "DotsSaveable(only_if_no_batch_dims=False)",
              "dots_with_no_batch_dims_saveable": "DotsSaveable(only_if_no_batch_dims=True)"}


def lm_loss(model, inputs, remat):
  h = model.hidden_states(inputs, remat=remat)
  logp = jax.nn.log_softmax(model.logits(h[:, :-1]).astype(jnp.float32), -1)
  nll = -jnp.take_along_axis(logp, inputs.input_ids[:, 1:, None], -1)[..., 0]
  weight = inputs.attention_mask[:, 1:].astype(jnp.float32)
  return (nll * weight).sum() / weight.sum()


def loss_and_grads(model, remat, run=True):
  """(loss, flat gradients, the jaxpr of the step); only the jaxpr when not `run`."""
  inputs, _ = model.prepare(text_batch())
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  fn = jax.jit(jax.value_and_grad(lambda p: lm_loss(nnx.merge(graphdef, p, rest), inputs, remat)))
  traced = fn.trace(params)
  if not run:
    return None, None, str(traced.jaxpr)
  loss, grads = traced.lower().compile()(params)
  flat = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(grads)}
  return float(loss), flat, str(traced.jaxpr)


@pytest.fixture(scope="module")
def reference_grads(tiny_model):
  return loss_and_grads(tiny_model, remat=False)


@pytest.mark.parametrize("remat,policy", [(False, "nothing_saveable")] +
                         [(True, p) for p in REMAT_POLICIES])
def test_loss_and_grads_match(reference_grads, scanned, remat, policy):
  ref_loss, ref_grads, _ = reference_grads
  graphdef, state = nnx.split(scanned)
  model = nnx.merge(graphdef, state)
  model.remat_policy = policy
  loss, grads, jaxpr = loss_and_grads(model, remat)
  assert bool(re.search(r"\bremat\d*\[", jaxpr)) == (remat and policy != "none")
  if remat and policy in SAVED_DOTS:
    assert SAVED_DOTS[policy] in jaxpr
  assert grads[("layers", "mlp", "up_proj", "kernel")].shape == (2, 64, 128)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  got = unstack(grads, ref_grads)
  assert np.abs(ref_grads[("layers", 0, "self_attn", "q_proj", "kernel")]).max() > 1e-4
  for p, g in ref_grads.items():
    np.testing.assert_allclose(got[p], g, rtol=1e-4, atol=1e-6, err_msg=str(p))


def test_unscanned_remat_policy_is_applied(tiny_model):
  graphdef, state = nnx.split(tiny_model)
  model = nnx.merge(graphdef, state)
  model.remat_policy = "dots_saveable"
  _, _, jaxpr = loss_and_grads(model, remat=True, run=False)
  assert SAVED_DOTS["dots_saveable"] in jaxpr
  model.remat_policy = "none"
  assert "remat" not in loss_and_grads(model, remat=True, run=False)[2]


def test_checkpoint_round_trip(tiny_hf, tiny_model, scanned, tmp_path):
  save_hf_checkpoint(scanned, tmp_path / "scanned")
  save_hf_checkpoint(tiny_model, tmp_path / "unscanned")
  got = load_file(tmp_path / "scanned" / "model.safetensors")
  ref = load_file(tmp_path / "unscanned" / "model.safetensors")
  assert list(got) == list(ref)                       # same tensors, in the same order
  for k in ref:
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path / "scanned",
                                                          attn_implementation="eager").eval()
  original = tiny_hf[0].state_dict()
  for k, v in hf.state_dict().items():
    torch.testing.assert_close(v, original[k], rtol=0, atol=0, msg=k)
  batch = vl_batch()
  with torch.no_grad():
    hf_out = hf(**hf_inputs(batch)).logits.numpy()
  ours = np.asarray(scanned(**batch))
  mask = batch["attention_mask"].astype(bool)
  np.testing.assert_allclose(ours[mask], hf_out[mask], atol=1e-4)
  reloaded = load_hf_checkpoint(tmp_path / "scanned")                  # into an unscanned one
  for p, value in flat_params(reloaded).items():
    np.testing.assert_array_equal(value, flat_params(tiny_model)[p], err_msg=str(p))


def test_sharded_files_and_mesh_load(scanned, tmp_path):
  """Several files (an index), layers split across them, loaded scanned onto an 8-device mesh."""
  save_hf_checkpoint(scanned, tmp_path / "ckpt", max_shard_bytes=200_000)
  files = [f for f in os.listdir(tmp_path / "ckpt") if f.endswith(".safetensors")]
  assert len(files) > 2
  mesh = make_mesh(1, 4, 2)
  model = load_hf_checkpoint(tmp_path / "ckpt", mesh=mesh, scan_layers=True)
  kernel = model.layers.self_attn.q_proj.kernel.get_value()
  assert kernel.sharding.spec == P(None, "fsdp", "tensor")
  shardings = state_shardings(nnx.state(model), mesh)
  assert shardings["layers"]["mlp"]["up_proj"]["kernel"].get_value().spec == \
      P(None, "fsdp", "tensor")
  for p, value in flat_params(model).items():
    np.testing.assert_array_equal(value, flat_params(scanned)[p], err_msg=str(p))


def test_errors(tiny_hf, tiny_model, tmp_path):
  with pytest.raises(ValueError, match=r"remat_policy: unknown 'dots'; choose from"):
    Qwen25VL(tiny_model.config, remat_policy="dots")
  with pytest.raises(ValueError, match=r"remat_policy: unknown 'all'"):
    load_hf_checkpoint(tiny_hf[1], remat_policy="all")
  tensors = load_file(os.path.join(tiny_hf[1], "model.safetensors"))
  (tmp_path / "ckpt").mkdir()
  (tmp_path / "ckpt" / "config.json").write_text(
      (tiny_hf[1] / "config.json").read_text())
  dropped = "model.layers.1.mlp.up_proj.weight"
  save_file({k: v for k, v in tensors.items() if k != dropped},
            tmp_path / "ckpt" / "model.safetensors")
  with pytest.raises(ValueError, match=r"missing tensors.*'model\.layers\.1\.mlp\.up_proj\.weight'"
                                       r"\] \(1 in all\)"):
    load_hf_checkpoint(tmp_path / "ckpt", scan_layers=True)
  extra = {"model.layers.2.mlp.up_proj.weight": tensors["model.layers.1.mlp.up_proj.weight"]}
  save_file({**tensors, **extra}, tmp_path / "ckpt" / "model.safetensors")
  with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.2\.mlp"):
    load_hf_checkpoint(tmp_path / "ckpt", scan_layers=True)
