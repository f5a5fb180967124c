"""Preference-pair families, registered by name: which rollouts of a prompt a family rejects
against the prompt's best good rollout, and how it builds the pair.

A family is a `candidates(best, members, cfg) -> member indices` function (its rejected
candidates, best first) and, optionally, a `make(best, rejected, cfg, encode, eos_id) -> Pair |
None` (default: the two stored responses, unless they are the same tokens). A new family is one
`register_pair_family` call; `VerifierConfig.families` then names it. The verifier's module
docstring describes the built-in four and how families take turns.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any, Callable, Iterator, Mapping, Sequence

from veripo_jax.rl.pairs import Pair

Encode = Callable[[str], Sequence[int]]


@dataclasses.dataclass(frozen=True)
class Member:
  """One rollout of a prompt's group: its record, its `verifier.RolloutCheck`, think and answer."""
  record: Mapping[str, Any]
  check: Any
  think: str | None
  answer: str | None


Candidates = Callable[[Member, list[Member], Any], list[int]]
MakePair = Callable[[Member, Member, Any, Encode, int], "Pair | None"]


@dataclasses.dataclass(frozen=True)
class PairFamily:
  name: str
  candidates: Candidates
  make: MakePair | None = None


PAIR_FAMILIES: dict[str, PairFamily] = {}


def register_pair_family(name: str, candidates: Candidates, make: MakePair | None = None
                         ) -> PairFamily:
  if name in PAIR_FAMILIES:
    raise ValueError(f"pair family {name!r} is already registered")
  PAIR_FAMILIES[name] = PairFamily(name, candidates, make)
  return PAIR_FAMILIES[name]


def stored_pair(best: Member, rejected: Member, family: str) -> Pair:
  return Pair(prompt_id=str(best.record["prompt_id"]),
              source_index=int(best.record["source_index"]), family=family,
              chosen_tokens=tuple(best.record["tokens"]),
              rejected_tokens=tuple(rejected.record["tokens"]),
              chosen_text=best.record["text"], rejected_text=rejected.record["text"],
              dataset_dir=str(best.record.get("dataset_dir", "")),
              split=str(best.record.get("split", "")))


def reflection_text(wrong_reasoning: str, phrase: str, good_reasoning: str,
                    good_answer: str) -> str:
  return (f"<think>{wrong_reasoning} {phrase} {good_reasoning}</think>"
          f"<answer>{good_answer}</answer>")


def _ranked(members: list[Member], keep: Callable[[Any], bool], last: Callable[[Any], bool]
            ) -> list[int]:
  """Indices of the members whose check passes `keep`, those with `last` true after the rest."""
  return sorted((i for i, m in enumerate(members) if keep(m.check)),
                key=lambda i: last(members[i].check))


register_pair_family("consistency", lambda best, members, cfg: _ranked(
    members, lambda c: c.consistent is False, lambda c: not c.correct))
register_pair_family("penalty", lambda best, members, cfg: _ranked(
    members, lambda c: not c.clean, lambda c: not c.correct))
register_pair_family("accuracy", lambda best, members, cfg: _ranked(
    members, lambda c: not c.correct, lambda c: not c.clean))


def _reflection(best: Member, rejected: Member, cfg, encode: Encode, eos_id: int) -> Pair | None:
  """Chosen: the wrong reasoning, the reflection phrase, then the good reasoning and answer; off
  when the joined reasoning is over `max_reasoning_tokens`. The NLL term (`chosen_nll_from`)
  starts after the phrase."""
  joined = f"{rejected.think} {cfg.reflection_phrase} {best.think}"
  if len(encode(joined)) > cfg.max_reasoning_tokens:
    return None
  text = reflection_text(rejected.think, cfg.reflection_phrase, best.think, best.answer)
  correction = len(encode(f"<think>{rejected.think} {cfg.reflection_phrase}"))
  return dataclasses.replace(stored_pair(best, rejected, "reflection"),
                             chosen_tokens=(*encode(text), eos_id), chosen_text=text,
                             chosen_nll_from=correction)


register_pair_family(
    "reflection", lambda best, members, cfg: [
        i for i, m in enumerate(members) if not m.check.correct and m.check.clean and m.think],
    _reflection)


def _family_pairs(family: PairFamily, best: Member, members: list[Member], used: set[int],
                  cfg, encode: Encode, eos_id: int) -> Iterator[tuple[int, Pair]]:
  """(member index, pair) for the family's unused rejected candidates, best first; lazy, so
  `used` is read when the family's turn comes and a reflection is encoded only then."""
  for i in family.candidates(best, members, cfg):
    if i in used:
      continue
    if family.make is not None:
      pair = family.make(best, members[i], cfg, encode, eos_id)
    elif tuple(members[i].record["tokens"]) != tuple(best.record["tokens"]):
      pair = stored_pair(best, members[i], family.name)
    else:
      pair = None
    if pair is not None:
      yield i, pair


def preferred(cfg) -> Callable[[Member], tuple]:
  """Sort key of good rollouts: the longest reasoning within `max_reasoning_tokens` first, then
  those over it from the shortest."""
  def key(m: Member) -> tuple:
    n = m.check.reasoning_tokens
    return (n > cfg.max_reasoning_tokens, n if n > cfg.max_reasoning_tokens else -n)
  return key


def group_pairs(members: list[Member], cfg, encode: Encode, eos_id: int) -> list[Pair]:
  """One prompt's pairs: families take turns in `cfg.families` order, one pair each per turn,
  until `cfg.max_pairs_per_prompt`; a rollout is rejected in at most one pair."""
  prompt_id = str(members[0].record["prompt_id"])
  members = sorted(members, key=lambda m: (int(m.record["sample"]), m.record["text"]))
  random.Random(f"{cfg.seed}/{prompt_id}").shuffle(members)  # the seeded tie-break
  goods = sorted((m for m in members if m.check.good), key=preferred(cfg))
  if not goods or cfg.max_pairs_per_prompt == 0:
    return []
  best = goods[0]
  pairs, used = [], set()
  sources = {name: _family_pairs(PAIR_FAMILIES[name], best, members, used, cfg, encode, eos_id)
             for name in cfg.families}
  while sources and len(pairs) < cfg.max_pairs_per_prompt:
    for name in list(sources):
      found = next(sources[name], None)
      if found is None:
        del sources[name]
        continue
      used.add(found[0])
      pairs.append(found[1])
      if len(pairs) == cfg.max_pairs_per_prompt:
        break
  return pairs
