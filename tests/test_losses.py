"""The pure losses of rl.losses against float64 numpy written out here, case by case."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from veripo_jax.rl import losses

# Jitted once per configuration and shape: far fewer compilations than op-by-op dispatch.
grpo_loss = jax.jit(losses.grpo_loss, static_argnames=(
    "clip_eps", "clip_eps_high", "dual_clip", "kl_coef", "aggregation"))
dpo_loss = jax.jit(losses.dpo_loss, static_argnames=("beta", "label_smoothing", "nll_coef"))
sft_loss = jax.jit(losses.sft_loss, static_argnames=("aggregation",))
group_advantages = jax.jit(losses.group_advantages, static_argnums=(1,),
                           static_argnames=("eps", "scale_by_std"))
token_logprobs = jax.jit(losses.token_logprobs)


def f32(x):
  return jnp.asarray(np.asarray(x, np.float32))


def value(terms) -> float:
  return float(terms.loss_sum) / float(terms.weight)


def metric(terms, name: str) -> float:
  total, count = terms.metrics[name]
  return float(total) / float(count)


def np_token_loss(ratio: float, adv: float, lo: float, hi: float, dual: float | None) -> float:
  """One token's clipped-surrogate loss, written piecewise (PPO objective A * r clipped
  pessimistically; for A < 0 the loss is capped at dual * |A|)."""
  if adv >= 0:
    return -adv * min(ratio, 1.0 + hi)        # gains stop at 1 + hi; no floor below
  loss = -adv * max(ratio, 1.0 - lo)          # |A| * r, but at least |A| * (1 - lo)
  return min(loss, -dual * adv) if dual is not None else loss


def np_grpo(logp, old, adv, mask, *, ref=None, lo=0.2, hi=None, dual=3.0, kl_coef=0.0,
            aggregation="seq-mean-token-mean"):
  """(per-token loss (N, T), the aggregated mean) in float64."""
  logp, old, mask = (np.asarray(a, np.float64) for a in (logp, old, mask))
  hi = lo if hi is None else hi
  per = np.zeros_like(logp)
  for i, j in np.ndindex(*logp.shape):
    per[i, j] = np_token_loss(np.exp(logp[i, j] - old[i, j]), float(adv[i]), lo, hi, dual)
    if kl_coef:
      d = float(ref[i, j]) - logp[i, j]
      per[i, j] += kl_coef * (np.exp(d) - d - 1.0)
  if aggregation == "token-mean":
    return per, (per * mask).sum() / mask.sum()
  rows = [(per[i] * mask[i]).sum() / mask[i].sum() for i in range(len(mask)) if mask[i].sum()]
  return per, float(np.mean(rows))


def random_grpo(rng, n=6, t=7):
  """Log-probs whose ratios spread over [0.4, 2.5]; row 2 has no tokens."""
  old = rng.uniform(-4.0, -0.5, (n, t))
  logp = old + rng.uniform(np.log(0.4), np.log(2.5), (n, t))
  ref = logp + rng.normal(0.0, 0.3, (n, t))
  adv = rng.normal(size=n)
  mask = (rng.uniform(size=(n, t)) < 0.7).astype(np.float64)
  mask[:, 0] = 1.0
  mask[2] = 0.0
  return logp, old, ref, adv, mask


# ------------------------------------------------------------------------------------------------
# GRPO


def test_grpo_clipping_cases():
  """Ratios inside, above 1+eps and below 1-eps, for A > 0 and A < 0, and the dual clip."""
  ratios = np.array([[0.5, 0.9, 1.0, 1.1, 1.5, 5.0], [0.5, 0.9, 1.0, 1.1, 1.5, 5.0]])
  old = np.full(ratios.shape, -2.0)
  logp = old + np.log(ratios)
  adv = np.array([2.0, -1.0])
  mask = np.ones_like(ratios)
  out = grpo_loss(f32(logp), f32(old), f32(adv), f32(mask), aggregation="token-mean")
  # By hand, eps = 0.2, dual clip 3:
  # A = 2: -2 * min(r, 1.2) -> r below 1-eps is not clipped (pessimistic), above is.
  # A = -1: max(r, 0.8), capped at 3 -> 0.8, 0.9, 1, 1.1, 1.5, 3.
  want = np.array([[-1.0, -1.8, -2.0, -2.2, -2.4, -2.4], [0.8, 0.9, 1.0, 1.1, 1.5, 3.0]])
  np.testing.assert_allclose(float(out.loss_sum), want.sum(), rtol=1e-6)
  assert float(out.weight) == 12.0
  assert metric(out, "clip_fraction") == pytest.approx(6 / 12)   # 0.5, 1.5, 5.0 in each row
  assert metric(out, "ratio_mean") == pytest.approx(ratios.mean(), rel=1e-6)
  assert metric(out, "policy_shift_kl") == pytest.approx(-np.log(ratios).mean(), rel=1e-5)
  # Without the dual clip the ratio-5 token of A = -1 costs 5.
  free = grpo_loss(f32(logp), f32(old), f32(adv), f32(mask), dual_clip=None,
                   aggregation="token-mean")
  assert float(free.loss_sum) == pytest.approx(want.sum() + 2.0, rel=1e-6)


def test_grpo_dual_clip_token_is_exactly_three():
  out = grpo_loss(f32([[np.log(5.0)]]), f32([[0.0]]), f32([-1.0]), f32([[1.0]]),
                  aggregation="token-mean")
  assert float(out.loss_sum) == 3.0 and float(out.weight) == 1.0


def test_grpo_asymmetric_clip():
  """clip_eps_high moves only the upper bound (and the clip_fraction threshold)."""
  ratios = np.array([[0.75, 1.25, 1.3]])
  old = np.zeros_like(ratios)
  for adv in (1.0, -1.0):
    for high in (None, 0.28):
      out = grpo_loss(f32(np.log(ratios)), f32(old), f32([adv]), f32(np.ones_like(ratios)),
                      clip_eps=0.2, clip_eps_high=high, aggregation="token-mean")
      _, want = np_grpo(np.log(ratios), old, [adv], np.ones_like(ratios), lo=0.2, hi=high,
                        aggregation="token-mean")
      assert value(out) == pytest.approx(want, rel=1e-6)
      outside = (ratios < 0.8) | (ratios > 1.0 + (0.2 if high is None else high))
      assert metric(out, "clip_fraction") == pytest.approx(outside.mean())
  # A > 0, ratio 1.25: clipped to 1.2 symmetric, kept at 1.25 with eps_high 0.28.
  sym = grpo_loss(f32([[np.log(1.25)]]), f32([[0.0]]), f32([1.0]), f32([[1.0]]))
  asym = grpo_loss(f32([[np.log(1.25)]]), f32([[0.0]]), f32([1.0]), f32([[1.0]]),
                   clip_eps_high=0.28)
  assert float(sym.loss_sum) == pytest.approx(-1.2) and float(asym.loss_sum) == pytest.approx(-1.25)


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
@pytest.mark.parametrize("kl_coef", [0.0, 0.1])
def test_grpo_matches_numpy(aggregation, kl_coef):
  rng = np.random.default_rng(0)
  logp, old, ref, adv, mask = random_grpo(rng)
  entropy = rng.uniform(0.0, 3.0, logp.shape)
  out = grpo_loss(f32(logp), f32(old), f32(adv), f32(mask), ref_logp=f32(ref),
                  entropy=f32(entropy), clip_eps=0.2, clip_eps_high=0.3, kl_coef=kl_coef,
                  aggregation=aggregation)
  per, want = np_grpo(logp, old, adv, mask, ref=ref, lo=0.2, hi=0.3, kl_coef=kl_coef,
                      aggregation=aggregation)
  assert value(out) == pytest.approx(want, rel=1e-5, abs=1e-6)
  # Rows without tokens are excluded: they count in neither the sum nor the weight.
  if aggregation == "token-mean":
    assert float(out.weight) == mask.sum()
  else:
    assert float(out.weight) == (mask.sum(1) > 0).sum() == len(mask) - 1
  ratio = np.exp(logp - old)
  clipped = ((ratio < 0.8) | (ratio > 1.3)).astype(float)
  assert 0 < (clipped * mask).sum() < mask.sum()        # the data has both kinds
  assert metric(out, "clip_fraction") == pytest.approx((clipped * mask).sum() / mask.sum())
  assert metric(out, "entropy") == pytest.approx((entropy * mask).sum() / mask.sum(), rel=1e-5)
  if kl_coef:
    d = ref - logp
    k3 = np.exp(d) - d - 1.0
    assert np.all(k3 >= 0)
    assert metric(out, "kl") == pytest.approx((k3 * mask).sum() / mask.sum(), rel=1e-5)
  else:
    assert "kl" not in out.metrics


def test_grpo_kl_term_alone():
  """With ratio 1 and A = 0 the loss is kl_coef * k3 exactly."""
  logp = np.array([[-1.0, -2.0, -0.5]])
  ref = np.array([[-1.5, -1.0, -0.5]])
  out = grpo_loss(f32(logp), f32(logp), f32([0.0]), f32(np.ones_like(logp)), ref_logp=f32(ref),
                  kl_coef=0.5, aggregation="token-mean")
  d = ref - logp
  assert value(out) == pytest.approx(0.5 * (np.exp(d) - d - 1).mean(), rel=1e-6)


def test_grpo_errors():
  x = f32(np.zeros((1, 2)))
  with pytest.raises(ValueError, match="ref_logp"):
    grpo_loss(x, x, f32([1.0]), x + 1, kl_coef=0.1)
  with pytest.raises(ValueError, match="aggregation"):
    grpo_loss(x, x, f32([1.0]), x + 1, aggregation="sum")


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_grpo_accumulation_is_exact(aggregation):
  """Summing (loss_sum, weight) over row splits equals the whole batch, gradients too."""
  rng = np.random.default_rng(1)
  logp, old, ref, adv, mask = random_grpo(rng, n=7)
  mask[5] = 0.0                              # an empty row in the second part too
  kw = dict(clip_eps=0.2, kl_coef=0.05, aggregation=aggregation)

  def terms(lp, rows):
    return grpo_loss(lp, f32(old[rows]), f32(adv[rows]), f32(mask[rows]),
                     ref_logp=f32(ref[rows]), **kw)

  whole = terms(f32(logp), slice(None))
  parts = [terms(f32(logp[rows]), rows) for rows in (slice(0, 3), slice(3, None))]
  assert float(sum(p.loss_sum for p in parts)) == pytest.approx(float(whole.loss_sum), rel=1e-6)
  assert float(sum(p.weight for p in parts)) == float(whole.weight)
  for name in whole.metrics:
    for k in range(2):
      assert float(sum(p.metrics[name][k] for p in parts)) == pytest.approx(
          float(whole.metrics[name][k]), rel=1e-5, abs=1e-6)
  # The per-part means averaged would be wrong: the weights differ between the parts.
  assert float(parts[0].weight) != float(parts[1].weight)
  _, want = np_grpo(logp, old, adv, mask, ref=ref, kl_coef=0.05, aggregation=aggregation)
  assert value(whole) == pytest.approx(want, rel=1e-5)

  def mean_loss(lp):
    t = terms(lp, slice(None))
    return t.loss_sum / t.weight

  def part_grad(rows):
    return np.asarray(jax.grad(lambda lp: terms(lp, rows).loss_sum)(f32(logp[rows])))

  g_whole = np.asarray(jax.grad(mean_loss)(f32(logp)))
  g_parts = np.concatenate([part_grad(r) for r in (slice(0, 3), slice(3, None))])
  g_parts /= float(sum(p.weight for p in parts))
  np.testing.assert_allclose(g_parts, g_whole, rtol=1e-5, atol=1e-7)
  assert np.all(g_whole[mask == 0] == 0) and np.abs(g_whole).max() > 1e-3


# ------------------------------------------------------------------------------------------------
# DPO


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_dpo_matches_formula(label_smoothing):
  rng = np.random.default_rng(2)
  pw, pl, rw, rl = (rng.normal(-20.0, 5.0, 6) for _ in range(4))
  valid = np.array([1, 1, 0, 1, 1, 0], np.float64)
  beta = 0.1
  out = dpo_loss(f32(pw), f32(pl), f32(rw), f32(rl), f32(valid), beta=beta,
                 label_smoothing=label_smoothing)
  x = beta * ((pw - rw) - (pl - rl))
  per = -(1 - label_smoothing) * np_log_sigmoid(x) - label_smoothing * np_log_sigmoid(-x)
  assert float(out.weight) == 4.0
  assert value(out) == pytest.approx((per * valid).sum() / 4, rel=1e-5)
  v = valid > 0
  assert 0 < (x[v] > 0).mean() < 1
  assert metric(out, "reward_accuracy") == pytest.approx((x[v] > 0).mean())
  assert metric(out, "margin") == pytest.approx(x[v].mean(), rel=1e-4, abs=1e-5)
  assert metric(out, "chosen_reward") == pytest.approx(beta * (pw - rw)[v].mean(), rel=1e-4,
                                                       abs=1e-5)
  assert metric(out, "rejected_reward") == pytest.approx(beta * (pl - rl)[v].mean(), rel=1e-4,
                                                         abs=1e-5)
  assert metric(out, "chosen_logp") == pytest.approx(pw[v].mean(), rel=1e-5)
  # No mask = all valid.
  full = dpo_loss(f32(pw), f32(pl), f32(rw), f32(rl), beta=beta, label_smoothing=label_smoothing)
  assert value(full) == pytest.approx(per.mean(), rel=1e-5)


def test_dpo_nll_term_is_the_chosen_per_token_nll():
  rng = np.random.default_rng(3)
  pw, pl, rw, rl = (rng.normal(-20.0, 5.0, 4) for _ in range(4))
  tokens = np.array([10.0, 4.0, 7.0, 1.0])
  valid = np.array([1, 1, 0, 1], np.float64)
  plain = dpo_loss(f32(pw), f32(pl), f32(rw), f32(rl), f32(valid), beta=0.1)
  rpo = dpo_loss(f32(pw), f32(pl), f32(rw), f32(rl), f32(valid), beta=0.1,
                 chosen_tokens=f32(tokens), nll_coef=0.5)
  extra = 0.5 * (-pw / tokens)
  assert value(rpo) - value(plain) == pytest.approx((extra * valid).sum() / 3, rel=1e-4)
  # Per-pair weights of the NLL term (DPOConfig.nll_families): pair 1 without it.
  weight = np.array([1.0, 0.0, 1.0, 0.5])
  weighted = dpo_loss(f32(pw), f32(pl), f32(rw), f32(rl), f32(valid), beta=0.1,
                      chosen_tokens=f32(tokens), nll_coef=0.5, nll_weight=f32(weight))
  assert value(weighted) - value(plain) == pytest.approx(
      (extra * weight * valid).sum() / 3, rel=1e-4)
  # The term over part of each chosen response (a reflection pair's correction): its own
  # log-prob sum and token count; the DPO part still reads the whole response.
  part, part_tokens = pw / 3.0, np.array([4.0, 2.0, 3.0, 1.0])
  partial = dpo_loss(f32(pw), f32(pl), f32(rw), f32(rl), f32(valid), beta=0.1,
                     chosen_tokens=f32(part_tokens), nll_coef=0.5, nll_logp=f32(part))
  assert value(partial) - value(plain) == pytest.approx(
      (0.5 * (-part / part_tokens) * valid).sum() / 3, rel=1e-4)
  with pytest.raises(ValueError, match="chosen_tokens"):
    losses.dpo_loss(f32(pw), f32(pl), f32(rw), f32(rl), nll_coef=0.5)


def test_dpo_at_zero_margin_is_log2():
  z = f32(np.zeros(3))
  out = dpo_loss(z - 5, z - 7, z - 5, z - 7, beta=0.5)
  assert value(out) == pytest.approx(np.log(2.0), rel=1e-6)
  assert metric(out, "reward_accuracy") == 0.0


# ------------------------------------------------------------------------------------------------
# Advantages, SFT, token log-probs


def test_group_advantages():
  rewards = np.array([1.0, 0.0, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 3.0])
  adv, std = group_advantages(f32(rewards), 4, eps=1e-6)
  groups = rewards.reshape(3, 4)
  mean = groups.mean(1, keepdims=True)
  pop_std = np.sqrt(((groups - mean) ** 2).mean(1, keepdims=True))   # ddof 0
  np.testing.assert_allclose(np.asarray(std), pop_std[:, 0], rtol=1e-6)
  want = ((groups - mean) / (pop_std + 1e-6)).reshape(-1)
  np.testing.assert_allclose(np.asarray(adv), want, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(adv)[4:8] == 0.0)          # zero-variance group: no signal
  np.testing.assert_allclose(np.asarray(adv)[8:], [-1 / np.sqrt(3)] * 3 + [np.sqrt(3)],
                             rtol=1e-5)
  raw, _ = group_advantages(f32(rewards), 4, scale_by_std=False)
  np.testing.assert_allclose(np.asarray(raw), (groups - mean).reshape(-1), atol=1e-6)
  with pytest.raises(ValueError, match="groups of 4"):
    group_advantages(f32(rewards[:10]), 4)
  with pytest.raises(ValueError):
    group_advantages(f32(rewards.reshape(3, 4)), 4)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean"])
def test_sft_masked_mean(aggregation):
  rng = np.random.default_rng(3)
  logp = -rng.uniform(0.0, 5.0, (4, 6))
  mask = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0] * 6, [1, 0, 0, 0, 0, 0]],
                  np.float64)
  out = sft_loss(f32(logp), f32(mask), aggregation=aggregation)
  if aggregation == "token-mean":
    want = -(logp * mask).sum() / mask.sum()
  else:
    want = np.mean([-(logp[i] * mask[i]).sum() / mask[i].sum() for i in (0, 1, 3)])
  assert value(out) == pytest.approx(want, rel=1e-6)
  assert metric(out, "target_prob") == pytest.approx((np.exp(logp) * mask).sum() / mask.sum(),
                                                     rel=1e-6)
  assert sft_loss(f32(logp), f32(mask)).weight == mask.sum()    # token-mean by default


def test_token_logprobs_and_entropy():
  rng = np.random.default_rng(4)
  logits = rng.normal(0.0, 3.0, (2, 5, 11))
  logits[0, 0] += 50.0                                 # stable for large logits
  logits = logits.astype(np.float32).astype(np.float64)
  normal = np.ones(logits.shape[:2], bool)
  normal[0, 0] = False
  targets = rng.integers(0, 11, (2, 5))
  logp, entropy = token_logprobs(f32(logits), jnp.asarray(targets))
  x = logits - logits.max(-1, keepdims=True)
  log_softmax = x - np.log(np.exp(x).sum(-1, keepdims=True))
  want = np.take_along_axis(log_softmax, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(np.asarray(logp), want, rtol=1e-5, atol=1e-5)
  want_h = -(np.exp(log_softmax) * log_softmax).sum(-1)
  np.testing.assert_allclose(np.asarray(entropy)[normal], want_h[normal], rtol=1e-5, atol=1e-5)
  # logz - sum(p * logits) cancels in fp32 when the logits are large (error ~ |logit| * 1e-7).
  assert abs(float(entropy[0, 0]) - want_h[0, 0]) < 1e-4
  assert logp.dtype == jnp.float32 and logp.shape == targets.shape
  half, _ = token_logprobs(f32(logits[1:]).astype(jnp.bfloat16), jnp.asarray(targets[1:]))
  assert half.dtype == jnp.float32
  # Uniform logits: log p = -log V, entropy log V.
  lp, h = token_logprobs(jnp.zeros((3, 11)), jnp.arange(3))
  np.testing.assert_allclose(np.asarray(lp), -np.log(11.0), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(h), np.log(11.0), rtol=1e-6)
