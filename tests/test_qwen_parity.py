"""Logit parity with transformers' Qwen2_5_VLForConditionalGeneration on random tiny models."""

import numpy as np
import pytest
import torch

from hf_reference import (IMAGE, VIDEO, build_hf_model, hf_logits, left_pad, random_image,
                          random_video, span, tiny_hf_config)
from veripo_jax.models.qwen2_5_vl import load_hf_checkpoint

TOL = 1e-4


def ours(model, batch):
  return np.asarray(model(**batch), np.float32)


def compare(model, hf_model, batch):
  ref = hf_logits(hf_model, batch)
  got = ours(model, batch)
  mask = np.asarray(batch.get("attention_mask", np.ones(ref.shape[:2]))).astype(bool)
  return np.abs(got - ref)[mask].max(), np.abs(ref).max()


def test_text_only(tiny_hf, tiny_model):
  batch = {"input_ids": np.array([[3, 17, 42, 99, 7, 200, 5, 8]])}
  err, scale = compare(tiny_model, tiny_hf[0], batch)
  assert scale > 1.0 and err <= TOL


def test_one_image(tiny_hf, tiny_model):
  pv, grid = random_image(np.random.RandomState(1), 56, 84)
  ids = [3, 4, 5] + span(IMAGE, grid) + [6, 7, 8]
  err, _ = compare(tiny_model, tiny_hf[0], {"input_ids": np.array([ids]), "pixel_values": pv,
                                             "image_grid_thw": grid})
  assert err <= TOL


def test_one_video(tiny_hf, tiny_model):
  pv, grid = random_video(np.random.RandomState(2), 4, 56, 84)
  ids = [3, 4, 5, 9, 10] + span(VIDEO, grid) + [6, 7, 8, 11]
  batch = {"input_ids": np.array([ids]), "pixel_values_videos": pv, "video_grid_thw": grid,
           "second_per_grid_ts": np.array([1.0], np.float32)}
  err, _ = compare(tiny_model, tiny_hf[0], batch)
  assert err <= TOL


def test_image_video_text_in_one_prompt(tiny_hf, tiny_model):
  rng = np.random.RandomState(3)
  # A large image (several windows per row) and a video with an odd spg exercise the indexing.
  ipv, igrid = random_image(rng, 140, 196)
  vpv, vgrid = random_video(rng, 6, 84, 56)
  ids = [3, 4] + span(IMAGE, igrid) + [5, 6, 7] + span(VIDEO, vgrid) + [8, 9]
  batch = {"input_ids": np.array([ids]), "pixel_values": ipv, "image_grid_thw": igrid,
           "pixel_values_videos": vpv, "video_grid_thw": vgrid,
           "second_per_grid_ts": np.array([0.5], np.float32)}
  err, _ = compare(tiny_model, tiny_hf[0], batch)
  assert err <= TOL


def test_left_padded_batch_of_two(tiny_hf, tiny_model):
  rng = np.random.RandomState(4)
  vpv, vgrid = random_video(rng, 4, 56, 84)   # (t-1)*interval < max(h, w)/2: the rope modes agree
  ipv, igrid = random_image(rng, 56, 56)
  rows = [[3, 4] + span(VIDEO, vgrid) + [5, 6, 7, 8, 9, 10],
          [11, 12, 13] + span(IMAGE, igrid) + [14]]
  ids, mask = left_pad(rows)
  batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": ipv,
           "image_grid_thw": igrid, "pixel_values_videos": vpv, "video_grid_thw": vgrid,
           "second_per_grid_ts": np.array([1.0], np.float32)}
  assert mask.min() == 0
  err, _ = compare(tiny_model, tiny_hf[0], batch)
  assert err <= TOL


def test_tied_embeddings(tmp_path):
  hf = build_hf_model(tiny_hf_config(tied=True), seed=5)
  hf.save_pretrained(tmp_path)
  model = load_hf_checkpoint(tmp_path)
  assert model.lm_head is None
  pv, grid = random_video(np.random.RandomState(5), 4, 56, 84)
  batch = {"input_ids": np.array([[3, 4] + span(VIDEO, grid) + [5, 6]]),
           "pixel_values_videos": pv, "video_grid_thw": grid}
  err, _ = compare(model, hf, batch)
  assert err <= TOL


def long_video_batch():
  # t=8 grid slices at interval 2 reach temporal offset 14 > max(h, w)/2 = 2: the modes differ.
  pv, grid = random_video(np.random.RandomState(6), 16, 56, 56)
  ids = [3, 4, 5, 6, 7] + span(VIDEO, grid) + [8, 9, 10, 11]
  return {"input_ids": np.array([ids]), "pixel_values_videos": pv, "video_grid_thw": grid,
          "second_per_grid_ts": np.array([1.0], np.float32)}


def test_long_video_hf5_mode_matches_transformers(tiny_hf, tiny_model_hf5):
  err, _ = compare(tiny_model_hf5, tiny_hf[0], long_video_batch())
  assert err <= TOL


def legacy_positions_by_hand():
  """[5 text][vs][8x(2x2) video][ve][4 text]: text resumes at max(previous) + 1 = 21."""
  t = list(range(6))
  h, w = list(range(6)), list(range(6))
  for s in range(8):                              # temporal slice s sits at 6 + 2s
    for i in range(2):
      for j in range(2):
        t.append(6 + 2 * s)
        h.append(6 + i)
        w.append(6 + j)
  tail = list(range(21, 26))                      # ve + 4 text tokens
  return np.array([t + tail, h + tail, w + tail])[:, None, :]


def test_long_video_legacy_mode_positions_by_hand(tiny_hf, tiny_model):
  batch = long_video_batch()
  from veripo_jax.models.qwen2_5_vl import prepare_inputs
  inputs, next_pos = prepare_inputs(tiny_model.config, batch["input_ids"],
                                    pixel_values_videos=batch["pixel_values_videos"],
                                    video_grid_thw=batch["video_grid_thw"],
                                    second_per_grid_ts=batch["second_per_grid_ts"])
  expected = legacy_positions_by_hand()
  np.testing.assert_array_equal(inputs.position_ids, expected)
  assert next_pos.tolist() == [26]
  # transformers fed those positions explicitly gives the legacy-mode logits.
  ref = hf_logits(tiny_hf[0], {**batch, "position_ids": expected})
  assert np.abs(ours(tiny_model, batch) - ref).max() <= TOL
  # ... and they differ from the hf5 rule, so this case really separates the modes.
  assert np.abs(hf_logits(tiny_hf[0], batch) - ref).max() > 1e-3


def test_bf16_error_within_twice_transformers_bf16(tiny_hf):
  import jax.numpy as jnp
  hf32, path = tiny_hf
  rng = np.random.RandomState(7)
  pv, grid = random_video(rng, 4, 56, 84)
  batch = {"input_ids": np.array([[3, 4, 5] + span(VIDEO, grid) + [6, 7, 8, 9]]),
           "pixel_values_videos": pv, "video_grid_thw": grid}
  ref = hf_logits(hf32, batch)
  hf16 = build_hf_model(tiny_hf_config(), dtype=torch.bfloat16)   # same seed: same weights
  hf16_err = np.abs(hf_logits(hf16, batch) - ref).max()
  ours16 = load_hf_checkpoint(path, dtype=jnp.bfloat16)
  our_err = np.abs(ours(ours16, batch) - ref).max()
  assert 0 < hf16_err and our_err <= 2 * hf16_err, (our_err, hf16_err)


def test_padded_pixel_rows_are_ignored(tiny_model):
  """A loader pads pixel rows to a patch bucket; only the rows the grids describe are used."""
  pv, grid = random_video(np.random.RandomState(8), 4, 56, 84)
  batch = {"input_ids": np.array([[3, 4] + span(VIDEO, grid) + [5]]),
           "pixel_values_videos": pv, "video_grid_thw": grid}
  padded = {**batch, "pixel_values_videos": np.concatenate([pv, np.ones((40, pv.shape[1]))])}
  np.testing.assert_array_equal(ours(tiny_model, padded), ours(tiny_model, batch))
  with pytest.raises(ValueError, match="needs 48 rows"):
    ours(tiny_model, {**batch, "pixel_values_videos": pv[:40]})
