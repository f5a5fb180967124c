"""Preference pairs on disk (JSON lines): what the verifier writes and the DPO stage reads.

A pair names its prompt by `dataset_dir`, `split` and `source_index` (the example's position in
that split), so the DPO stage re-reads and re-encodes that example's video with the same
preprocessing as the rollout, whatever split its own data config reads; chosen and rejected
responses are stored as token ids (and text, for people). A `dataset_dir` inside the workdir is
stored relative to it (`RunContext.dataset_ref`); "" fields fall back to the DPO stage's data.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Sequence

from veripo_jax.fileio import write_jsonl_atomic


@dataclasses.dataclass(frozen=True)
class Pair:
  prompt_id: str
  source_index: int
  family: str
  chosen_tokens: tuple[int, ...]
  rejected_tokens: tuple[int, ...]
  chosen_text: str = ""
  rejected_text: str = ""
  dataset_dir: str = ""
  split: str = ""
  # First chosen token the RPO NLL term covers: a reflection pair's correction, after the
  # wrong reasoning and the phrase (imitating the wrong reasoning would teach it).
  chosen_nll_from: int = 0

  def to_json(self) -> dict:
    return {"prompt_id": self.prompt_id, "dataset_dir": self.dataset_dir, "split": self.split,
            "source_index": self.source_index, "family": self.family,
            "chosen": {"tokens": list(self.chosen_tokens), "text": self.chosen_text,
                       "nll_from": self.chosen_nll_from},
            "rejected": {"tokens": list(self.rejected_tokens), "text": self.rejected_text}}

  @classmethod
  def from_json(cls, d: Mapping[str, Any]) -> "Pair":
    return cls(prompt_id=d["prompt_id"], source_index=int(d["source_index"]),
               family=d["family"], chosen_tokens=tuple(d["chosen"]["tokens"]),
               rejected_tokens=tuple(d["rejected"]["tokens"]),
               chosen_text=d["chosen"].get("text", ""),
               rejected_text=d["rejected"].get("text", ""),
               dataset_dir=str(d.get("dataset_dir", "")), split=str(d.get("split", "")),
               chosen_nll_from=int(d["chosen"].get("nll_from", 0)))


def write_pairs(path: str, pairs: Sequence[Pair]) -> None:
  write_jsonl_atomic(path, [p.to_json() for p in pairs])


def read_pairs(path: str) -> list[Pair]:
  pairs = []
  with open(path, encoding="utf-8") as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        pairs.append(Pair.from_json(json.loads(line)))
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{n}: bad preference pair ({e!r})") from e
  return pairs
