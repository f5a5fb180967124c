"""An extension from outside the package: a preference-pair family, registered by name. A
verifier stage then names it in `verifier.families` like a built-in one."""

from veripo_jax.rl import pair_families

NAME = "shortest_rejected"


def shortest_first(best, members, cfg) -> list[int]:
  """Every rollout of the prompt other than the chosen one, the shortest text first."""
  return sorted((i for i, m in enumerate(members) if m is not best),
                key=lambda i: len(members[i].record["text"]))


def register() -> None:
  pair_families.register_pair_family(NAME, shortest_first)


def unregister() -> None:
  del pair_families.PAIR_FAMILIES[NAME]
