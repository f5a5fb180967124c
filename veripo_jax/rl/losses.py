"""Pure loss functions of the three optimisation stages (GRPO, DPO, SFT).

Every loss returns a `train.loss_terms.LossTerms` (sums and counts: accumulation stays exact).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from veripo_jax.train.loss_terms import LossTerms

AGGREGATIONS = ("seq-mean-token-mean", "token-mean")


def token_logprobs(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """log p(target) and the entropy at each position, in fp32. logits (..., V), targets (...)."""
  logits = logits.astype(jnp.float32)
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  probs = jnp.exp(logits - logz[..., None])
  entropy = logz - jnp.sum(probs * logits, axis=-1)
  return picked - logz, entropy


def chunked_token_logprobs(head: Callable[[jax.Array], jax.Array], h: jax.Array,
                           targets: jax.Array, chunk: int) -> tuple[jax.Array, jax.Array]:
  """`token_logprobs(head(h), targets)` computed `chunk` positions at a time.

  h (N, T, D) hidden states, targets (N, T); `head` maps (N, C, D) -> logits (N, C, V). The
  chunks run in a `lax.scan` whose body is rematerialised (`jax.checkpoint`): the forward keeps
  only each chunk's log-probs and entropies, the backward recomputes one chunk's logits at a
  time, so neither pass holds more than (N, chunk, V) logits (the full (N, T, V) ones are never
  formed). A last chunk of T mod `chunk` positions runs on its own (no padding). Equal to the
  unchunked path up to float summation order.
  """
  if chunk <= 0 or chunk >= targets.shape[1]:
    return token_logprobs(head(h), targets)
  n, t = targets.shape
  body = jax.checkpoint(lambda hc, tc: token_logprobs(head(hc), tc), prevent_cse=False)
  full = t - t % chunk
  hs = h[:, :full].reshape(n, full // chunk, chunk, h.shape[-1]).swapaxes(0, 1)
  ts = targets[:, :full].reshape(n, full // chunk, chunk).swapaxes(0, 1)
  _, (logp, entropy) = jax.lax.scan(lambda carry, x: (carry, body(*x)), None, (hs, ts))
  logp, entropy = (a.swapaxes(0, 1).reshape(n, full) for a in (logp, entropy))
  if full < t:
    tail_logp, tail_entropy = body(h[:, full:], targets[:, full:])
    logp = jnp.concatenate([logp, tail_logp], axis=1)
    entropy = jnp.concatenate([entropy, tail_entropy], axis=1)
  return logp, entropy


def group_advantages(rewards: jax.Array, group_size: int, *, eps: float = 1e-6,
                     scale_by_std: bool = True) -> tuple[jax.Array, jax.Array]:
  """GRPO advantages A_i = (r_i - mean_G) / (std_G + eps) over consecutive groups of G.

  Returns (advantages (N,), per-group std (N/G,)); a group with zero std carries no signal
  (all its advantages are 0). std is the population std (ddof 0), as in the GRPO paper's code.
  """
  r = jnp.asarray(rewards, jnp.float32)
  if r.ndim != 1 or r.shape[0] % group_size:
    raise ValueError(f"rewards of shape {r.shape} do not split into groups of {group_size}")
  groups = r.reshape(-1, group_size)
  mean = groups.mean(axis=1, keepdims=True)
  std = groups.std(axis=1, keepdims=True)
  adv = groups - mean
  if scale_by_std:
    adv = adv / (std + eps)
  return adv.reshape(-1), std[:, 0]


def _aggregate(per_token: jax.Array, mask: jax.Array, aggregation: str):
  """(sum, weight) of per-token values under an aggregation; rows with no tokens count nothing."""
  tokens = mask.sum(axis=-1)
  if aggregation == "seq-mean-token-mean":
    seq_mean = (per_token * mask).sum(axis=-1) / jnp.maximum(tokens, 1.0)
    return seq_mean.sum(), (tokens > 0).sum().astype(jnp.float32)
  if aggregation == "token-mean":
    return (per_token * mask).sum(), tokens.sum()
  raise ValueError(f"unknown aggregation {aggregation!r}; choose from {AGGREGATIONS}")


def _token_stat(values: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  return (values * mask).sum(), mask.sum()


def grpo_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array, *,
              ref_logp: jax.Array | None = None, entropy: jax.Array | None = None,
              clip_eps: float = 0.2, clip_eps_high: float | None = None,
              dual_clip: float | None = 3.0, kl_coef: float = 0.0,
              aggregation: str = "seq-mean-token-mean") -> LossTerms:
  """Clipped surrogate with dual clip and an optional k3 KL penalty, per response token.

  logp/old_logp/ref_logp/mask (N, T), advantages (N,). For A < 0 the loss is capped at
  dual_clip * |A| (the ratio may not push a negative-advantage token beyond dual_clip).
  KL_k3(pi || ref) = exp(ref - logp) - (ref - logp) - 1 >= 0.
  """
  mask = mask.astype(jnp.float32)
  adv = advantages.astype(jnp.float32)[:, None]
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  high = clip_eps if clip_eps_high is None else clip_eps_high
  surrogate = -jnp.minimum(ratio * adv, jnp.clip(ratio, 1.0 - clip_eps, 1.0 + high) * adv)
  if dual_clip is not None:
    surrogate = jnp.where(adv < 0, jnp.minimum(surrogate, -dual_clip * adv), surrogate)
  per_token = surrogate
  metrics = {
      "clip_fraction": _token_stat(((ratio < 1.0 - clip_eps) | (ratio > 1.0 + high))
                                   .astype(jnp.float32), mask),
      "ratio_mean": _token_stat(ratio, mask),
      # k1 estimate of KL(pi_old || pi): how far the updates have moved the policy.
      "policy_shift_kl": _token_stat(-log_ratio, mask),
  }
  if kl_coef:
    if ref_logp is None:
      raise ValueError("grpo_loss: kl_coef > 0 needs ref_logp")
    d = ref_logp - logp
    kl = jnp.exp(d) - d - 1.0
    per_token = per_token + kl_coef * kl
    metrics["kl"] = _token_stat(kl, mask)
  if entropy is not None:
    metrics["entropy"] = _token_stat(entropy, mask)
  loss_sum, weight = _aggregate(per_token, mask, aggregation)
  return LossTerms(loss_sum, weight, metrics)


def dpo_loss(chosen_logp: jax.Array, rejected_logp: jax.Array, ref_chosen_logp: jax.Array,
             ref_rejected_logp: jax.Array, valid: jax.Array | None = None, *, beta: float = 0.1,
             label_smoothing: float = 0.0, chosen_tokens: jax.Array | None = None,
             nll_coef: float = 0.0, nll_weight: jax.Array | None = None,
             nll_logp: jax.Array | None = None) -> LossTerms:
  """Sigmoid DPO over (P,) sequence log-probs (sums over response tokens).

  loss = -log sigma(beta * ((pi_w - ref_w) - (pi_l - ref_l))); with label smoothing e the
  conservative form -(1 - e) log sigma(x) - e log sigma(-x). With `nll_coef` a > 0, plus
  a * (-pi_w / |y_w|), the chosen response's per-token NLL (`chosen_tokens` = |y_w|): the
  RPO form (Pang et al. 2024), which keeps DPO from lowering the chosen log-probs along with
  the rejected ones. `nll_weight` (P,) scales that term per pair (default 1). `nll_logp` is
  the log-prob that term reads when it covers only part of the chosen response (then
  `chosen_tokens` counts that part's tokens); default `chosen_logp`.
  """
  valid = jnp.ones_like(chosen_logp) if valid is None else valid.astype(jnp.float32)
  chosen_reward = beta * (chosen_logp - ref_chosen_logp)
  rejected_reward = beta * (rejected_logp - ref_rejected_logp)
  x = chosen_reward - rejected_reward
  losses = -(1.0 - label_smoothing) * jax.nn.log_sigmoid(x) \
      - label_smoothing * jax.nn.log_sigmoid(-x)
  if nll_coef:
    if chosen_tokens is None:
      raise ValueError("nll_coef > 0 needs chosen_tokens (the chosen responses' lengths)")
    nll = -(chosen_logp if nll_logp is None else nll_logp) / jnp.maximum(chosen_tokens, 1.0)
    losses = losses + nll_coef * (nll if nll_weight is None else nll_weight * nll)
  stat = lambda v: ((v * valid).sum(), valid.sum())
  metrics = {
      "reward_accuracy": stat((x > 0).astype(jnp.float32)),
      "margin": stat(x),
      "chosen_reward": stat(chosen_reward),
      "rejected_reward": stat(rejected_reward),
      "chosen_logp": stat(chosen_logp),
      "rejected_logp": stat(rejected_logp),
  }
  return LossTerms((losses * valid).sum(), valid.sum(), metrics)


def sft_loss(logp: jax.Array, mask: jax.Array, *, aggregation: str = "token-mean") -> LossTerms:
  """Masked next-token negative log-likelihood over response tokens."""
  mask = mask.astype(jnp.float32)
  loss_sum, weight = _aggregate(-logp, mask, aggregation)
  return LossTerms(loss_sum, weight, {"target_prob": _token_stat(jnp.exp(logp), mask)})
