"""The workdir's layout and the files stages hand to each other.

    WORKDIR/stages/<name>/          one directory per stage
        done.json                   the finished stage's summary (its presence: done)
        config.json                 what it ran with (`rl.recorded_config`)
        policy/                     the exported policy (a Hugging Face checkpoint)
        checkpoints/                Orbax train states while it runs
        rollouts/round_*.jsonl      a GRPO stage's rollouts (`rl.rollout`)
        pairs.jsonl, checks.jsonl   a verifier stage's pairs (`rl.pairs`) and rollout checks
        discard.json                a verifier stage's easy prompts and the discarded ones
        responses.jsonl             an eval stage's responses
        judge_verdicts.jsonl        an independent judge's verdicts on them (judge_eval)

Stages find each other's outputs through these functions only, so a file name has one owner.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

from veripo_jax.fileio import write_json_atomic
from veripo_jax.rl.pairs import read_pairs

STAGES_DIR = "stages"
DONE_FILE = "done.json"
POLICY_DIR = "policy"
PAIRS_FILE = "pairs.jsonl"
CHECKS_FILE = "checks.jsonl"
DISCARD_FILE = "discard.json"
RESPONSES_FILE = "responses.jsonl"
VERDICTS_FILE = "judge_verdicts.jsonl"


def stage_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, STAGES_DIR, name)


def policy_dir(workdir: str, name: str) -> str:
  """Where stage `name` exports its policy (a Hugging Face checkpoint)."""
  return os.path.join(stage_dir(workdir, name), POLICY_DIR)


def pairs_file(workdir: str, name: str) -> str:
  return os.path.join(stage_dir(workdir, name), PAIRS_FILE)


def is_path(value: str) -> bool:
  """A checkpoint or file path (else a stage name)."""
  return "/" in value or os.sep in value or "://" in value


def read_stage_input(workdir: str, field: str, ref: str):
  """What a stage's `field` (a stage input, `STAGE_INPUTS`) names: an earlier stage's artifact
  (`ref` = its name) or a file (`ref` = a path), read. A missing file names the field."""
  from veripo_jax.config_utils import ConfigError
  file_of, read = STAGE_INPUTS[field]
  path = ref if is_path(ref) else file_of(workdir, ref)
  if not os.path.exists(path):
    raise ConfigError(f"{field}: {path} does not exist (did stage {ref!r} finish?)")
  return read(path)


def write_discarded(directory: str, easy: Sequence[int], discarded: Sequence[int],
                    fraction: float, seed: int) -> None:
  write_json_atomic(os.path.join(directory, DISCARD_FILE),
                    {"fraction": fraction, "seed": seed, "easy": list(easy),
                     "discarded": list(discarded)})


def read_discarded(workdir: str, stage_names: Sequence[str]) -> list[int]:
  """The union of the prompts that the named verifier stages discarded."""
  out: set[int] = set()
  for name in stage_names:
    path = os.path.join(stage_dir(workdir, name), DISCARD_FILE)
    if not os.path.exists(path):
      raise FileNotFoundError(f"discard_from names {name!r}, which has no {path} (is it a "
                              "finished verifier stage before this one?)")
    with open(path, encoding="utf-8") as f:
      try:
        out.update(int(i) for i in json.load(f)["discarded"])
      except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a discard file ({e})") from e
  return sorted(out)


# Stage inputs the loop resolves for any stage kind that declares them (`StageKind.inputs`):
# field -> (the file stage `name` leaves in the workdir, its reader).
STAGE_INPUTS = {"pairs": (pairs_file, read_pairs)}
