"""Text-only Qwen2 / Qwen2.5 checkpoints (the verifier's judge): load, parity, generate, save,
serve."""

import json
import re

import numpy as np
import portpicker
import pytest
import torch
from safetensors.numpy import load_file, save_file
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hf_reference import build_hf_model, left_pad, tiny_hf_config
from test_serving import greedy
from veripo_jax.inference import generate
from veripo_jax.models.qwen2_5_vl import from_hf_config, load_hf_checkpoint, save_hf_checkpoint
from veripo_jax.serving.client import JudgeClient
from veripo_jax.serving.engine import QwenEngine
from veripo_jax.serving.server import start_server

TOL = 1e-4
EOS, PAD = 1, 0                                             # what test_serving's `greedy` uses
ROWS = [[5, 17, 42, 99], [3, 200, 7, 8, 60, 61, 9, 11]]     # row 0 is left-padded


def build_qwen2(tied: bool) -> Qwen2ForCausalLM:
  """A random tiny Qwen2ForCausalLM: the (randomised) language model of hf_reference's tiny
  Qwen2.5-VL, whose decoder is Qwen2's; rope_theta and eps differ from both classes' defaults."""
  vl = build_hf_model(tiny_hf_config(tied=tied))
  t = vl.config.text_config
  cfg = Qwen2Config(
      vocab_size=t.vocab_size, hidden_size=t.hidden_size, intermediate_size=t.intermediate_size,
      num_hidden_layers=t.num_hidden_layers, num_attention_heads=t.num_attention_heads,
      num_key_value_heads=t.num_key_value_heads, rms_norm_eps=1e-5,
      rope_parameters={"rope_type": "default", "rope_theta": 5e5}, tie_word_embeddings=tied,
      bos_token_id=PAD, eos_token_id=EOS, pad_token_id=PAD)
  model = Qwen2ForCausalLM._from_config(cfg, attn_implementation="eager")
  model.model.load_state_dict(vl.model.language_model.state_dict())
  model.lm_head.load_state_dict(vl.lm_head.state_dict())
  return model.eval()


@pytest.fixture(scope="module", params=[False, True], ids=["untied", "tied"])
def qwen2(request, tmp_path_factory):
  """(transformers model, its checkpoint directory, our model loaded from it)."""
  hf = build_qwen2(tied=request.param)
  path = tmp_path_factory.mktemp("qwen2")
  hf.save_pretrained(path)
  return hf, path, load_hf_checkpoint(path)


def padded_batch() -> dict:
  ids, mask = left_pad(ROWS, PAD)
  return {"input_ids": ids, "attention_mask": mask}


def hf_logits(model, batch: dict) -> np.ndarray:
  """Positions count real tokens only, as transformers' generate computes them."""
  mask = torch.tensor(batch["attention_mask"])
  with torch.no_grad():
    return model(input_ids=torch.tensor(batch["input_ids"]), attention_mask=mask,
                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits.numpy()


def max_error(ours: np.ndarray, ref: np.ndarray, batch: dict) -> float:
  return float(np.abs(ours - ref)[batch["attention_mask"].astype(bool)].max())


def test_config_reads_the_file(qwen2):
  hf, path, model = qwen2
  cfg = model.config
  assert cfg.vision is None and model.visual is None
  assert (cfg.text.rope_theta, cfg.text.rms_norm_eps) == (5e5, 1e-5)
  assert cfg.tie_word_embeddings == hf.config.tie_word_embeddings
  assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (PAD, EOS, PAD)
  assert from_hf_config(cfg.to_hf_dict()) == cfg


def test_logits_match_transformers_on_left_padded_batch(qwen2):
  hf, _, model = qwen2
  batch = padded_batch()
  ref = hf_logits(hf, batch)
  assert np.abs(ref).max() > 1.0
  assert max_error(np.asarray(model(**batch)), ref, batch) <= TOL
  # Qwen2's (B, L) position_ids work too.
  pos = np.clip(batch["attention_mask"].cumsum(-1) - 1, 0, None)
  assert max_error(np.asarray(model(**batch, position_ids=pos)), ref, batch) <= TOL


def test_greedy_generate_matches_transformers(qwen2):
  hf, _, model = qwen2
  batch = padded_batch()
  out = generate(model, batch, 12, eos_token_ids=(EOS,), pad_token_id=PAD)
  with torch.no_grad():
    ref = hf.generate(input_ids=torch.tensor(batch["input_ids"]),
                      attention_mask=torch.tensor(batch["attention_mask"]), max_new_tokens=12,
                      do_sample=False, eos_token_id=EOS, pad_token_id=PAD)
  ref = ref[:, batch["input_ids"].shape[1]:].numpy()
  lengths = np.asarray(out.lengths)
  assert lengths.min() >= 8
  for row, n in enumerate(lengths):
    np.testing.assert_array_equal(np.asarray(out.tokens)[row, :n], ref[row, :n])


def test_save_then_transformers_loads_qwen2(qwen2, tmp_path):
  hf, path, model = qwen2
  save_hf_checkpoint(model, tmp_path / "saved")
  assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "qwen2"
  assert load_file(tmp_path / "saved" / "model.safetensors").keys() == \
      load_file(path / "model.safetensors").keys()
  back = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", attn_implementation="eager")
  assert isinstance(back, Qwen2ForCausalLM)
  batch = padded_batch()
  np.testing.assert_allclose(hf_logits(back.float().eval(), batch), hf_logits(hf, batch),
                             atol=1e-5)
  assert load_hf_checkpoint(tmp_path / "saved").config == model.config


def test_pixel_values_are_refused(qwen2):
  model = qwen2[2]
  with pytest.raises(ValueError, match="video inputs given to a text-only model"):
    model(np.array([[3, 4]]), pixel_values_videos=np.zeros((4, 1176), np.float32),
          video_grid_thw=np.array([[1, 2, 2]]))


@pytest.fixture
def damaged(qwen2, tmp_path):
  """Writes a copy of the checkpoint with `tensors` changed and `config` fields replaced."""
  path = qwen2[1]
  original = load_file(path / "model.safetensors")

  def write(drop=(), add=None, **config):
    tensors = {k: v for k, v in original.items() if k not in drop}
    save_file({**tensors, **(add or {})}, tmp_path / "model.safetensors")
    cfg = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, **config}))
    return tmp_path
  return write


def test_errors_name_file_and_key(damaged):
  key = "model.layers.1.mlp.up_proj.weight"
  with pytest.raises(ValueError, match=rf"missing tensors.*'{re.escape(key)}'"):
    load_hf_checkpoint(damaged(drop=[key]))
  with pytest.raises(ValueError, match=r"model\.safetensors: unexpected tensor 'visual\.merger"):
    load_hf_checkpoint(damaged(add={"visual.merger.ln_q.weight": np.ones(4, np.float32)}))
  with pytest.raises(ValueError, match=r"config\.json: field 'rope_scaling' has type 'yarn'"):
    load_hf_checkpoint(damaged(rope_parameters=None,
                               rope_scaling={"rope_type": "yarn", "factor": 4.0}))
  with pytest.raises(ValueError, match=r"config\.json: missing field 'vocab_size'"):
    load_hf_checkpoint(damaged(vocab_size=None))


def test_served_checkpoint_matches_generate(qwen2):
  hf, path, model = qwen2
  engine = QwenEngine.from_checkpoint(path, max_concurrent_decodes=2, max_prefill_length=16,
                                      max_decode_length=12, stop_token_ids=(EOS,))
  server = start_server(engine, portpicker.pick_unused_port())
  try:
    with JudgeClient(server.address, timeout_s=120, retries=1) as client:
      got = client.generate_many(ROWS, 10)
  finally:
    server.stop()
  assert got == greedy(model, ROWS, 10)
