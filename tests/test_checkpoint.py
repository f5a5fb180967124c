"""HF checkpoint loading (both key layouts, sharded files), saving, and error messages."""

import json
import os
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file
from transformers import Qwen2_5_VLForConditionalGeneration

from hf_reference import VIDEO, hf_logits, random_video, span
from veripo_jax.models.qwen2_5_vl import load_hf_checkpoint, save_hf_checkpoint
from veripo_jax.models.qwen2_5_vl.checkpoint import canonical_key, hf_key_to_path, path_to_hf_key


def batch():
  pv, grid = random_video(np.random.RandomState(21), 4, 56, 84)
  return {"input_ids": np.array([[3, 4] + span(VIDEO, grid) + [5, 6, 7]]),
          "pixel_values_videos": pv, "video_grid_thw": grid}


def write_in_memory_layout(src, dst, num_files=3):
  """Re-save a checkpoint with transformers 5.x in-memory names, sharded over several files."""
  tensors = load_file(os.path.join(src, "model.safetensors"))
  renamed = {}
  for k, v in tensors.items():
    if k.startswith("visual."):
      k = "model." + k
    elif k.startswith("model."):
      k = "model.language_model." + k[len("model."):]
    renamed[k] = v
  keys = sorted(renamed)
  os.makedirs(dst, exist_ok=True)
  weight_map = {}
  for i in range(num_files):
    name = f"model-{i + 1:05d}-of-{num_files:05d}.safetensors"
    part = {k: renamed[k] for k in keys[i::num_files]}
    save_file(part, os.path.join(dst, name), metadata={"format": "pt"})
    weight_map.update({k: name for k in part})
  with open(os.path.join(dst, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
  shutil.copyfile(os.path.join(src, "config.json"), os.path.join(dst, "config.json"))
  return tensors


def test_key_mapping_round_trip(tiny_model):
  from flax import nnx
  for path, _ in nnx.to_flat_state(nnx.state(tiny_model, nnx.Param)):
    key = path_to_hf_key(path)
    assert hf_key_to_path(key) == path
    assert canonical_key(key) == key
  assert path_to_hf_key(("visual", "merger", "fc1", "kernel")) == "visual.merger.mlp.0.weight"
  assert path_to_hf_key(("layers", 1, "self_attn", "q_proj", "bias")) == \
      "model.layers.1.self_attn.q_proj.bias"
  assert canonical_key("model.language_model.norm.weight") == "model.norm.weight"
  assert canonical_key("model.visual.blocks.0.attn.qkv.bias") == "visual.blocks.0.attn.qkv.bias"


def test_in_memory_layout_sharded_files_load_same(tiny_hf, tiny_model, tmp_path):
  write_in_memory_layout(tiny_hf[1], tmp_path / "v5")
  other = load_hf_checkpoint(tmp_path / "v5")
  np.testing.assert_array_equal(np.asarray(other(**batch())), np.asarray(tiny_model(**batch())))


def test_save_then_transformers_load_same_logits(tiny_hf, tiny_model, tmp_path):
  out = tmp_path / "saved"
  save_hf_checkpoint(tiny_model, out, max_shard_bytes=200_000)      # forces several shards
  assert (out / "model.safetensors.index.json").exists()
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]
  hf = Qwen2_5_VLForConditionalGeneration.from_pretrained(out, attn_implementation="eager")
  ref = hf_logits(tiny_hf[0], batch())
  np.testing.assert_allclose(hf_logits(hf.float().eval(), batch()), ref, atol=1e-5)
  # Saved tensors equal the originals bit for bit (on-disk layout, torch shapes).
  orig = load_file(os.path.join(tiny_hf[1], "model.safetensors"))
  saved = {}
  for f in os.listdir(out):
    if f.endswith(".safetensors"):
      saved.update(load_file(out / f))
  assert saved.keys() == orig.keys()
  for k in orig:
    np.testing.assert_array_equal(saved[k], orig[k])


def test_save_overwrites_atomically(tiny_model, tmp_path):
  import jax.numpy as jnp
  out = tmp_path / "ckpt"
  save_hf_checkpoint(tiny_model, out)
  save_hf_checkpoint(tiny_model, out, dtype=jnp.bfloat16)
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["torch_dtype"] == "bfloat16"
  assert load_file(out / "model.safetensors")["model.norm.weight"].dtype.name == "bfloat16"
  assert sorted(os.listdir(tmp_path)) == ["ckpt"]


@pytest.fixture
def broken(tiny_hf, tmp_path):
  """A writable copy of the tiny checkpoint to damage."""
  tensors = load_file(os.path.join(tiny_hf[1], "model.safetensors"))
  config = json.loads((tiny_hf[1] / "config.json").read_text())

  def write(tensors=tensors, config=config):
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path
  return tensors, config, write


def test_error_missing_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_hf_checkpoint(tmp_path)


def test_error_unsupported_model_type(broken):
  tensors, config, write = broken
  path = write(config={**config, "model_type": "llama"})
  with pytest.raises(ValueError, match=r"config.json: unsupported model_type 'llama'"):
    load_hf_checkpoint(path)


def test_error_missing_tensor(broken):
  tensors, config, write = broken
  dropped = "model.layers.1.mlp.up_proj.weight"
  path = write(tensors={k: v for k, v in tensors.items() if k != dropped})
  with pytest.raises(ValueError, match=r"missing tensors.*model\.layers\.1\.mlp\.up_proj\.weight"):
    load_hf_checkpoint(path)


def test_error_unexpected_tensor(broken):
  tensors, config, write = broken
  extra = {"model.layers.9.mlp.up_proj.weight": np.zeros((2, 2), np.float32)}
  path = write(tensors={**tensors, **extra})
  with pytest.raises(ValueError, match=r"model.safetensors: unexpected tensor 'model\.layers\.9"):
    load_hf_checkpoint(path)


def test_error_shape_mismatch(broken):
  tensors, config, write = broken
  bad = dict(tensors)
  bad["model.norm.weight"] = np.ones((65,), np.float32)
  with pytest.raises(ValueError,
                     match=r"model.safetensors: tensor 'model\.norm\.weight' has shape \(65,\)"):
    load_hf_checkpoint(write(tensors=bad))


def test_error_truncated_file(broken):
  tensors, config, write = broken
  path = write()
  data = (path / "model.safetensors").read_bytes()
  (path / "model.safetensors").write_bytes(data[: len(data) - 100])
  with pytest.raises(ValueError, match=r"model.safetensors: file truncated inside tensor"):
    load_hf_checkpoint(path)
