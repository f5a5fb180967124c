"""An extension from outside the package: a reward, registered by name. A GRPO stage then names
it in `rollout.rewards` like a built-in one."""

from veripo_jax.rl import rewards

NAME = "brevity"


def brevity(response: str, example) -> float:
  """1 for an empty response, falling to 0 at 400 characters (and the example is all there)."""
  assert {"answer", "problem_type", "options", "task", "data_type"} <= set(example)
  return max(0.0, 1.0 - len(response) / 400)


def register() -> None:
  rewards.register_reward(NAME)(brevity)


def unregister() -> None:
  del rewards.REWARDS[NAME]
