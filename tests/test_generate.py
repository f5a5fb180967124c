"""KV-cache generation: parity with transformers generate, forking, sampling filters, EOS,
repetition penalty."""

import jax
import numpy as np
import pytest
import torch

from hf_reference import VIDEO, hf_inputs, left_pad, random_video, span
from veripo_jax.inference import SamplingParams, filter_logits, generate, next_token
from veripo_jax.inference.sampling import mark_seen, prompt_seen, repetition_penalty
from veripo_jax.models.qwen2_5_vl.layers import cached_attention


def video_prompts(pad: int = 0):
  """Two left-padded rows of different lengths, each with a video; `pad` fills the padding."""
  rng = np.random.RandomState(11)
  pv1, g1 = random_video(rng, 4, 56, 84)
  pv2, g2 = random_video(rng, 2, 84, 56)
  rows = [[3, 4, 5] + span(VIDEO, g1) + [6, 7, 8, 9], [10, 11] + span(VIDEO, g2) + [12]]
  ids, mask = left_pad(rows, pad)
  return {"input_ids": ids, "attention_mask": mask,
          "pixel_values_videos": np.concatenate([pv1, pv2]),
          "video_grid_thw": np.concatenate([g1, g2]),
          "second_per_grid_ts": np.array([1.0, 0.5], np.float32)}


@pytest.fixture(scope="module")
def greedy(tiny_model):
  return generate(tiny_model, video_prompts(), 20, eos_token_ids=(1,), pad_token_id=0)


def test_greedy_matches_transformers_generate(tiny_hf, greedy):
  hf = tiny_hf[0]
  batch = video_prompts()
  with torch.no_grad():
    out = hf.generate(**hf_inputs(batch), max_new_tokens=20, do_sample=False, eos_token_id=1,
                      pad_token_id=0)
  ref = out[:, batch["input_ids"].shape[1]:].numpy()
  lengths = np.asarray(greedy.lengths)
  assert lengths.min() >= 16
  for row in range(2):
    n = lengths[row]
    np.testing.assert_array_equal(np.asarray(greedy.tokens)[row, :n], ref[row, :n])


def test_logprobs_are_model_log_softmax(tiny_model, greedy):
  """Teacher-forced forward over prompt + generated tokens reproduces the returned log-probs."""
  batch = video_prompts()
  toks = np.asarray(greedy.tokens)[:, :8]
  ids = np.concatenate([batch["input_ids"], toks], 1)
  mask = np.concatenate([batch["attention_mask"], np.ones_like(toks)], 1)
  logits = np.asarray(tiny_model(**{**batch, "input_ids": ids, "attention_mask": mask}))
  logp = jax.nn.log_softmax(logits[:, batch["input_ids"].shape[1] - 1:-1], -1)
  expected = np.take_along_axis(np.asarray(logp), toks[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(greedy.logprobs)[:, :8], expected, atol=2e-5)


def test_num_samples_forks_cache(tiny_model, greedy):
  out = generate(tiny_model, video_prompts(), 20, num_samples=3, eos_token_ids=(1,),
                 pad_token_id=0)
  tokens = np.asarray(out.tokens).reshape(2, 3, -1)
  for g in range(3):
    np.testing.assert_array_equal(tokens[:, g], np.asarray(greedy.tokens))
  np.testing.assert_array_equal(np.asarray(out.lengths).reshape(2, 3)[:, 0], greedy.lengths)


def test_sampling_is_seeded_and_top_k_one_is_greedy(tiny_model, greedy):
  batch = video_prompts()
  kw = dict(temperature=1.0, num_samples=4, eos_token_ids=(1,), pad_token_id=0)
  a = generate(tiny_model, batch, 12, rng=jax.random.key(1), **kw)
  b = generate(tiny_model, batch, 12, rng=jax.random.key(1), **kw)
  c = generate(tiny_model, batch, 12, rng=jax.random.key(2), **kw)
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert not np.array_equal(a.tokens, c.tokens)
  assert len({tuple(r) for r in np.asarray(a.tokens)}) > 1       # samples of a prompt differ
  k1 = generate(tiny_model, batch, 12, temperature=1.0, top_k=1, rng=jax.random.key(3),
                eos_token_ids=(1,), pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(k1.tokens), np.asarray(greedy.tokens)[:, :12])


def test_shorter_generation_is_a_prefix(tiny_model, greedy):
  """The final token comes from the loop's last logits: lengths 1 and 5 agree with 20."""
  for n in (1, 5):
    out = generate(tiny_model, video_prompts(), n, eos_token_ids=(1,), pad_token_id=0)
    assert out.tokens.shape == (2, n)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(greedy.tokens)[:, :n])
    np.testing.assert_allclose(np.asarray(out.logprobs), np.asarray(greedy.logprobs)[:, :n],
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(out.lengths), np.minimum(greedy.lengths, n))


def test_per_row_eos_stop(tiny_model, greedy):
  first = np.asarray(greedy.tokens)[:, 2]            # make row 0's third token an EOS
  out = generate(tiny_model, video_prompts(), 20, eos_token_ids=(int(first[0]),),
                 pad_token_id=0)
  toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
  stop = [int(np.argmax(np.asarray(greedy.tokens)[r] == first[0])) for r in range(2)]
  hit = [first[0] in np.asarray(greedy.tokens)[r] for r in range(2)]
  for r in range(2):
    n = stop[r] + 1 if hit[r] else 20
    assert lengths[r] == n
    np.testing.assert_array_equal(toks[r, :n], np.asarray(greedy.tokens)[r, :n])
    assert (toks[r, n:] == 0).all() and (np.asarray(out.logprobs)[r, n:] == 0).all()


def test_filter_logits_against_numpy():
  rng = np.random.RandomState(0)
  logits = rng.randn(3, 50).astype(np.float32) * 3
  params = SamplingParams(temperature=0.7, top_p=0.8, top_k=10)
  got = np.asarray(filter_logits(logits, params))
  for row, x in zip(got, logits / 0.7):
    keep = np.zeros(50, bool)
    order = np.argsort(-x)[:10]                       # top-k first
    p = np.exp(x[order] - x[order].max())
    p /= p.sum()
    mass = 0.0
    for idx, pi in zip(order, p):                     # then the nucleus over what is left
      if mass < 0.8:
        keep[idx] = True
      mass += pi
    np.testing.assert_array_equal(np.isfinite(row), keep)
    np.testing.assert_allclose(row[keep], x[keep], rtol=1e-6)


def test_bad_sampling_params():
  with pytest.raises(ValueError, match="top_p"):
    SamplingParams(temperature=1.0, top_p=0.0)
  with pytest.raises(ValueError, match="temperature"):
    SamplingParams(temperature=-1.0)
  for bad in (0.0, -1.05, float("nan")):
    with pytest.raises(ValueError, match="repetition_penalty"):
      SamplingParams(repetition_penalty=bad)
  with pytest.raises(ValueError, match="repetition_penalty"):       # no seen-token table
    next_token(np.zeros((1, 4), np.float32), jax.random.key(0),
               SamplingParams(repetition_penalty=1.05))


# --- repetition penalty ---------------------------------------------------------------------------

def test_repetition_penalty_matches_transformers_generate(tiny_hf, tiny_model, greedy):
  """Greedy with repetition_penalty equals transformers generate on left-padded video prompts.

  The padding holds id 60, which row 1 emits second under penalties 1.5 and 3.0: penalising the
  padding (transformers < 5 did; transformers 5 passes the padding length as
  `prompt_ignore_length`) changes row 1's tokens, so this also pins the padding rule. 1.05 (the
  VerIPO eval value) changes nothing on this random model; 1.5, 3.0 and 0.7 do.
  """
  hf = tiny_hf[0]
  batch = video_prompts(pad=60)
  n_prompt = batch["input_ids"].shape[1]
  plain = np.asarray(greedy.tokens)
  changed = []
  for penalty in (1.05, 1.5, 3.0, 0.7):
    out = generate(tiny_model, batch, 20, repetition_penalty=penalty, eos_token_ids=(1,),
                   pad_token_id=0)
    with torch.no_grad():
      ref = hf.generate(**hf_inputs(batch), max_new_tokens=20, do_sample=False, eos_token_id=1,
                        pad_token_id=0, repetition_penalty=penalty)[:, n_prompt:].numpy()
    toks, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
    assert lengths.min() >= 16, (penalty, lengths)
    for row in range(2):
      n = lengths[row]
      np.testing.assert_array_equal(toks[row, :n], ref[row, :n], err_msg=f"penalty {penalty}")
    changed.append(not np.array_equal(toks, plain))
  assert changed[1:] == [True, True, True], changed     # the test can see the penalty
  # The returned log-probs stay the model's own (unpenalised) log_softmax.
  ids = np.concatenate([batch["input_ids"], toks[:, :8]], 1)
  mask = np.concatenate([batch["attention_mask"], np.ones_like(toks[:, :8])], 1)
  logits = np.asarray(tiny_model(**{**batch, "input_ids": ids, "attention_mask": mask}))
  logp = np.asarray(jax.nn.log_softmax(logits[:, n_prompt - 1:-1], -1))
  np.testing.assert_allclose(np.asarray(out.logprobs)[:, :8],
                             np.take_along_axis(logp, toks[:, :8, None], -1)[..., 0], atol=2e-5)
  # Sampling with top_k 1 is the penalised greedy path, for every forked sample.
  forked = generate(tiny_model, batch, 20, repetition_penalty=0.7, temperature=1.0, top_k=1,
                    num_samples=2, rng=jax.random.key(5), eos_token_ids=(1,), pad_token_id=0)
  np.testing.assert_array_equal(np.asarray(forked.tokens), np.repeat(toks, 2, axis=0))


def test_repetition_penalty_by_hand():
  """Seen ids: the prompt's real tokens (not its padding, not ids outside the vocabulary), each
  counted once however often it occurs, then each emitted token."""
  logits = np.array([[2.0, -1.0, 0.5, -3.0, 0.0, 4.0, 1.0, -2.0],
                     [2.0, -1.0, 0.5, -3.0, 0.0, 4.0, 1.0, -2.0]], np.float32)
  ids = np.array([[5, 5, 1, 1, 1, 3, 4, 9],      # two pads (id 5), 1 three times, 9 >= V
                  [7, 7, 7, 0, 2, 6, 0, -1]])
  mask = np.array([[0, 0, 1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1, 1, 1]])
  seen = prompt_seen(ids, mask, 8)
  np.testing.assert_array_equal(np.asarray(seen), [[0, 1, 0, 1, 1, 0, 0, 0],
                                                   [1, 0, 1, 0, 0, 0, 1, 1]])
  got = np.asarray(repetition_penalty(logits, seen, 2.0))
  np.testing.assert_array_equal(got, [[2.0, -2.0, 0.5, -6.0, 0.0, 4.0, 1.0, -2.0],
                                      [1.0, -1.0, 0.25, -3.0, 0.0, 4.0, 0.5, -4.0]])
  np.testing.assert_array_equal(np.asarray(repetition_penalty(logits, seen, 0.5))[0],
                                [2.0, -0.5, 0.5, -1.5, 0.0, 4.0, 1.0, -2.0])
  seen = mark_seen(seen, np.array([5, 1], np.int32))
  np.testing.assert_array_equal(np.asarray(seen), [[0, 1, 0, 1, 1, 1, 0, 0],
                                                   [1, 1, 1, 0, 0, 0, 1, 1]])
  # transformers' processor on the same ids (its padding rule: ignore the leading padding).
  from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor
  # It cannot take the id -1: 0 stands in for it, already seen in that row.
  ids_t = np.concatenate([np.clip(ids, 0, None), [[5], [1]]], 1)        # the emitted tokens
  proc = RepetitionPenaltyLogitsProcessor(2.0, prompt_ignore_length=torch.tensor([2, 1]))
  ref = proc(torch.tensor(ids_t), torch.tensor(logits)).numpy()
  np.testing.assert_array_equal(np.asarray(repetition_penalty(logits, seen, 2.0)), ref)


def test_repetition_penalty_comes_before_temperature_and_filters():
  """next_token = transformers' chain repetition penalty -> temperature -> top-k. (Penalty and
  temperature commute, both keep the sign; top-k does not: the seen top token, penalised below
  the second, must lose.)"""
  from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                      TemperatureLogitsWarper, TopKLogitsWarper)
  rng = np.random.RandomState(0)
  logits = (rng.randn(64, 50) * 3).astype(np.float32)
  ids = rng.randint(0, 50, (64, 12))
  seen = prompt_seen(ids, None, 50)
  params = SamplingParams(temperature=0.7, top_k=5, repetition_penalty=1.8)
  x = torch.tensor(logits)
  for proc in (RepetitionPenaltyLogitsProcessor(1.8), TemperatureLogitsWarper(0.7),
               TopKLogitsWarper(5)):
    x = proc(torch.tensor(ids), x)
  ref = x.numpy()
  got = np.asarray(filter_logits(repetition_penalty(logits, seen, 1.8), params))
  np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
  np.testing.assert_allclose(got[np.isfinite(got)], ref[np.isfinite(ref)], rtol=1e-6)
  key = jax.random.key(4)
  np.testing.assert_array_equal(np.asarray(next_token(logits, key, params, seen)),
                                np.asarray(jax.random.categorical(key, got, axis=-1)))
  # The top token is seen; penalised it falls below the runner-up, which top_k 1 must pick.
  top = np.array([[3.0, 2.0, 1.0, -1.0]], np.float32)
  seen = prompt_seen(np.array([[0]]), None, 4)
  for temperature in (0.0, 0.5, 2.0):
    params = SamplingParams(temperature=temperature, top_k=1, repetition_penalty=2.0)
    assert int(next_token(top, jax.random.key(0), params, seen)[0]) == 1
    assert int(next_token(top, jax.random.key(0), SamplingParams(temperature, top_k=1),
                          seen)[0]) == 0


def test_cached_attention_against_numpy():
  """GQA attention over the transposed-key cache layout, with masked slots and a fully masked
  row (finite: uniform over the cache)."""
  rng = np.random.RandomState(0)
  b, l, h, kv, d, s = 2, 3, 4, 2, 8, 5
  q, k, v = rng.randn(b, l, h, d), rng.randn(b, kv, s, d), rng.randn(b, kv, s, d)
  mask = rng.rand(b, 1, l, s) < 0.7
  mask[1, 0, 2] = False
  out = np.asarray(cached_attention(*(np.float32(x) for x in (q, k.transpose(0, 1, 3, 2), v)),
                                    mask))
  for bi in range(b):
    for li in range(l):
      for hi in range(h):
        kh = hi // (h // kv)
        scores = k[bi, kh] @ q[bi, li, hi] / np.sqrt(d)
        keep = mask[bi, 0, li]
        w = np.exp(scores - scores[keep].max()) * keep if keep.any() else np.ones(s)
        np.testing.assert_allclose(out[bi, li, hi], (w / w.sum()) @ v[bi, kh], atol=1e-5)


def test_forked_cache_stays_sharded_over_the_batch(tiny_hf):
  """Two prompts forked 4 ways over 8 batch shards: the prompts' cache cannot be split, the
  forked one can and must be (left to propagation, a long bucket's forked cache came out
  replicated on every chip: 3,200 GiB a chip for the 72B, compile_check)."""
  from veripo_jax.inference.generate import generation
  from veripo_jax.models.qwen2_5_vl import load_hf_checkpoint
  from veripo_jax.parallel.sharding import make_mesh, shard_model
  mesh = make_mesh(data=1, fsdp=-1, tensor=1)
  model = shard_model(load_hf_checkpoint(tiny_hf[1]), mesh)
  fn, args, kwargs = generation(model, video_prompts(), 4, num_samples=4, eos_token_ids=(1,),
                                pad_token_id=0, mesh=mesh).prefill()
  logits, cache, _ = fn(*args, **kwargs)
  assert cache.max_length == video_prompts()["input_ids"].shape[1] + 4
  for array in (logits, *jax.tree.leaves((cache.keys, cache.values, cache.valid))):
    assert array.shape[0] == 8
    assert array.sharding.shard_shape(array.shape)[0] == 1, array.sharding
