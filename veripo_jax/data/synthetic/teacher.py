"""The warm-start teacher's reasoning: the world's chain, and for a configurable share of the
examples a lapse that real chain-of-thought data has, reasoning that does not support the
(correct) answer it comes with.

Two lapses, drawn per example from its own seeded stream (so datasets stay pure functions of
seed, split and index): the chain's conclusion rewritten to another candidate answer
(`WorldConfig.unsupported_conclusion_share`), or the chain cut after its opening sentence, so it
concludes nothing (`unfinished_reasoning_share`). A policy warm-started on such data answers
without following its own reasoning some of the time: the inconsistency the Rollout-Aware
Verifier finds in GRPO rollouts and DPO trains away (reference/veripo_method.md §4).
"""

from __future__ import annotations

from veripo_jax.data.synthetic.judge import candidates, opening, restate
from veripo_jax.data.synthetic.world import WorldConfig, example_rng


def teacher_reasoning(record: dict, cfg: WorldConfig, seed: int, split: str, index: int) -> str:
  """The reasoning the warm start learns for this example (its answer tag stays gold)."""
  rng = example_rng(seed, f"{split}/teacher", index)
  u = rng.random()
  if u < cfg.unsupported_conclusion_share:
    others = [c for c in candidates(record) if c != record["answer"]]
    return restate(record["reasoning"], record["answer"], others[int(rng.integers(len(others)))])
  if u < cfg.unsupported_conclusion_share + cfg.unfinished_reasoning_share:
    return opening(record["reasoning"])
  return record["reasoning"]
