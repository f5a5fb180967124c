"""Host-side index computations and configs, checked against the porting spec's worked examples."""

import json

import numpy as np
import pytest
from flax import nnx

from veripo_jax.models.qwen2_5_vl import Qwen25VL, from_hf_config, get_preset, get_rope_index
from veripo_jax.models.qwen2_5_vl.vision_index import bucket, prepare_vision, window_index

VISION = get_preset("7b").vision


def cu(lengths):
  return [0] + np.cumsum(lengths).tolist()


def test_window_index_examples_from_spec():
  order, lengths = window_index(np.array([[1, 12, 18]]), VISION)
  assert order[:9].tolist() == [0, 1, 2, 3, 9, 10, 11, 12, 18]
  assert cu(lengths) == [0, 64, 128, 144, 176, 208, 216]
  assert sorted(order.tolist()) == list(range(54))
  order, lengths = window_index(np.array([[2, 8, 14]]), VISION)
  assert cu(lengths) == [0, 64, 112, 176, 224]


def test_prepare_vision_segments_cover_every_patch_once():
  grid = np.array([[2, 8, 14], [1, 12, 18]])
  n = int(grid.prod(-1).sum())
  v = prepare_vision(np.zeros((n, VISION.patch_dim), np.float32), grid, VISION)
  assert v.pixel_values.shape[0] == bucket(n, 64) >= n
  for seg, lengths in ((v.full, [112, 112, 216]), (v.window, None)):
    ids = seg.gather[seg.valid]
    assert sorted(ids.tolist()) == list(range(n))
    flat = seg.gather.reshape(-1)
    np.testing.assert_array_equal(flat[seg.scatter[:n]], np.arange(n))
    if lengths:
      assert seg.valid.sum(1)[: len(lengths)].tolist() == lengths
  np.testing.assert_array_equal(v.window_order[v.restore_order], np.arange(len(v.window_order)))
  # First rotary positions of the (2,8,14) item in window order: the first 2x2 block.
  assert v.rotary_pos[:4].tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_bucket_sizes():
  assert [bucket(n) for n in (1, 16, 17, 33, 100, 1000)] == [16, 16, 20, 40, 112, 1024]
  assert all(n <= bucket(n) <= 1.25 * n + 16 for n in range(1, 5000))


def test_rope_index_tiny_example_from_spec():
  ids = np.array([[1, 2, 3, 4, 5, 250] + [253] * 8 + [251, 6, 7, 8, 9]])
  kw = dict(image_token_id=252, video_token_id=253, video_grid_thw=np.array([[2, 4, 4]]),
            second_per_grid_ts=np.array([1.0]))
  pos, nxt = get_rope_index(ids, mode="hf5", **kw)
  assert pos[0, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 6, 6, 6, 8, 8, 8, 8, 8, 9, 10, 11, 12]
  assert pos[1, 0, 6:14].tolist() == [6, 6, 7, 7, 6, 6, 7, 7]
  assert pos[2, 0, 6:14].tolist() == [6, 7, 6, 7, 6, 7, 6, 7]
  assert nxt.tolist() == [13]
  pos, nxt = get_rope_index(ids, mode="legacy", **kw)
  assert pos[0, 0, 14:].tolist() == [9, 10, 11, 12, 13]
  assert nxt.tolist() == [14]


def test_rope_index_errors():
  ids = np.array([[1, 253, 253, 2]])
  with pytest.raises(ValueError, match="needs 4"):
    get_rope_index(ids, image_token_id=252, video_token_id=253,
                   video_grid_thw=np.array([[1, 4, 4]]))
  with pytest.raises(ValueError, match="unknown rope mode"):
    get_rope_index(ids, image_token_id=252, video_token_id=253, mode="nope")


@pytest.mark.parametrize("name,billions", [("3b", 3.755), ("7b", 8.292)])
def test_preset_parameter_counts(name, billions):
  model = nnx.eval_shape(lambda: Qwen25VL(get_preset(name)))
  count = sum(v.get_value().size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  assert round(count / 1e9, 3) == billions


def hf4_config():
  """A transformers 4.x style config.json (text fields at top level, rope_scaling)."""
  return {"model_type": "qwen2_5_vl", "vocab_size": 151936, "hidden_size": 2048,
          "intermediate_size": 11008, "num_hidden_layers": 36, "num_attention_heads": 16,
          "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
          "max_position_embeddings": 128000,
          "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
          "tie_word_embeddings": True, "image_token_id": 151655, "video_token_id": 151656,
          "vision_config": {"model_type": "qwen2_5_vl", "depth": 32, "hidden_size": 1280,
                            "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
                            "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2,
                            "in_chans": 3, "window_size": 112}}


def test_from_hf_config_4x_and_5x_forms(tmp_path):
  cfg4 = from_hf_config(hf4_config())
  assert cfg4 == get_preset("3b")
  (tmp_path / "config.json").write_text(json.dumps(get_preset("7b").to_hf_dict()))
  assert from_hf_config(tmp_path) == get_preset("7b")
  from transformers import Qwen2_5_VLConfig
  cfg5 = Qwen2_5_VLConfig(**hf4_config())
  assert from_hf_config(json.loads(cfg5.to_json_string())) == get_preset("3b")


def test_from_hf_config_errors(tmp_path):
  bad = hf4_config()
  del bad["vision_config"]["depth"]
  with pytest.raises(ValueError, match="missing field 'vision_config.depth'"):
    from_hf_config(bad)
  (tmp_path / "config.json").write_text("{\n  \"model_type\": \n")
  with pytest.raises(ValueError, match="config.json: invalid JSON at line"):
    from_hf_config(tmp_path)
