"""Logical-axis sharding: rules, and the model on an (fsdp=4, tensor=2) mesh of 8 CPU devices."""

import re

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from hf_reference import IMAGE, VIDEO, left_pad, random_image, random_video, span
from veripo_jax.inference import generate
from veripo_jax.models.qwen2_5_vl import load_hf_checkpoint
from veripo_jax.parallel.sharding import (DEFAULT_RULES, activation_sharding, logical_to_spec,
                                          make_mesh, merge_rules)


def test_rules_map_and_drop_non_divisible_axes():
  mesh = make_mesh(data=2, fsdp=2, tensor=2)
  assert logical_to_spec(("embed", "mlp"), DEFAULT_RULES) == P("fsdp", "tensor")
  # batch takes both data and fsdp; embed then cannot reuse fsdp.
  spec = logical_to_spec(("batch", "embed"), DEFAULT_RULES, (8, 4), mesh)
  assert spec == P(("data", "fsdp"), None)
  # 3420-wide MLP on tensor=8 is not divisible: replicated instead of failing.
  mesh8 = make_mesh(data=1, fsdp=1, tensor=8)
  assert logical_to_spec(("embed", "mlp"), DEFAULT_RULES, (1280, 3420), mesh8) == P("fsdp", None)
  spec = logical_to_spec(("embed", "mlp"), DEFAULT_RULES, (1280, 3424), mesh8)
  assert spec == P("fsdp", "tensor")


def test_config_rules_replace_the_named_axes_only():
  rules = merge_rules((("mlp", ("fsdp", "tensor")), ("vocab", None)))
  assert [name for name, _ in rules] == [name for name, _ in DEFAULT_RULES]
  assert dict(rules)["mlp"] == ("fsdp", "tensor") and dict(rules)["vocab"] is None
  assert {k: v for k, v in rules if k not in ("mlp", "vocab")} == {
      k: v for k, v in DEFAULT_RULES if k not in ("mlp", "vocab")}
  assert logical_to_spec(("mlp",), rules) == P(("fsdp", "tensor"))
  for bad, message in (((("mlpp", "tensor"),), "unknown logical axis 'mlpp'"),
                       ((("mlp", "model"),), "unknown mesh axes ['model']"),
                       ((("mlp",),), "a rule is")):
    with pytest.raises(ValueError, match=re.escape(message)):
      merge_rules(bad)


def test_make_mesh_sizes():
  assert dict(make_mesh(fsdp=-1, tensor=2).shape) == {"data": 1, "fsdp": 4, "tensor": 2}
  try:
    make_mesh(data=3, fsdp=1, tensor=1)
  except ValueError as e:
    assert "needs 3 devices" in str(e)
  else:
    raise AssertionError("expected ValueError")


def batch():
  rng = np.random.RandomState(31)
  vpv, vg = random_video(rng, 4, 56, 84)
  ipv, ig = random_image(rng, 56, 56)
  ids, mask = left_pad([[3, 4] + span(VIDEO, vg) + [5, 6, 7], [8] + span(IMAGE, ig) + [9, 10]])
  return {"input_ids": ids, "attention_mask": mask, "pixel_values": ipv, "image_grid_thw": ig,
          "pixel_values_videos": vpv, "video_grid_thw": vg}


def test_fsdp4_tensor2_matches_one_device(tiny_hf, tiny_model):
  mesh = make_mesh(data=1, fsdp=4, tensor=2)
  sharded = load_hf_checkpoint(tiny_hf[1], mesh=mesh)
  q = sharded.layers[0].self_attn.q_proj.kernel.get_value()
  assert q.sharding.spec == P("fsdp", "tensor") and len(q.sharding.device_set) == 8
  emb = sharded.embed_tokens.embedding.get_value()
  assert emb.sharding.spec == P("tensor", "fsdp")
  with activation_sharding(mesh):
    got = np.asarray(sharded(**batch()))
  ref = np.asarray(tiny_model(**batch()))
  assert np.abs(got - ref).max() <= 1e-5
  out = generate(sharded, batch(), 6, mesh=mesh, eos_token_ids=(1,))
  ref_out = generate(tiny_model, batch(), 6, eos_token_ids=(1,))
  np.testing.assert_array_equal(out.tokens, ref_out.tokens)
  assert jax.device_count() == 8
