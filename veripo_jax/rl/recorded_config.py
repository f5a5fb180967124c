"""What each stage ran with, kept in its directory, so that a changed config is never skipped
silently on a re-run of the same workdir.

A stage records `stages/<name>/config.json` (its own section, the seed and the model section)
when it first starts. Before anything runs, a re-run compares every recorded stage with the
config it was given. A difference stops the run with the changed fields, unless the user asks
to re-run: then the first changed stage and every stage after it start again, their old
directories kept beside them as `<name>.replaced-<n>`. The world (`config.data`) is built once
per workdir; changing it needs a new workdir.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

from veripo_jax.config_utils import ConfigError
from veripo_jax.fileio import write_json_atomic

CONFIG_FILE = "config.json"
DATA_FILE = "data_config.json"


class ConfigChanged(ConfigError):
  """The config differs from what a workdir's stages ran with; the message lists the fields."""


def _plain(value: Any) -> Any:
  """A JSON-comparable copy of a config section: mappings (ConfigDicts too) as dicts, tuples as
  lists, anything JSON lacks as its string."""
  if hasattr(value, "items"):
    return {str(k): _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return json.loads(json.dumps(value, default=str))


def stage_record(cfg, name: str) -> dict:
  return _plain({"stage": cfg.stages[name], "seed": cfg.seed, "model": cfg.model})


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  """`field: old -> new` for every leaf that differs (a missing side shows as <unset>)."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new), key=str):
      out += differences(old.get(key, "<unset>"), new.get(key, "<unset>"),
                         f"{prefix}.{key}" if prefix else str(key))
    return out
  return [] if old == new else [f"{prefix}: {old!r} -> {new!r}"]


def _read(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def check_data(cfg, workdir: str) -> None:
  """Refuses a workdir whose world was built from another `config.data`; records it otherwise."""
  path = os.path.join(workdir, DATA_FILE)
  data = _plain(cfg.data)
  if not os.path.exists(path):
    write_json_atomic(path, data)
    return
  changed = differences(_read(path), data, "config.data")
  if changed:
    raise ConfigChanged(f"{'; '.join(changed)}: this workdir's world was built from the old "
                        "config.data; use a new --workdir")


def check_stages(cfg, stage_dirs: dict[str, str], order: Sequence[str], rerun_changed: bool,
                 rerun_from: str | None = None) -> list[str]:
  """Stages (in order) to start again: the first whose record differs and all after it, or
  (`rerun_from`) the named stage and all after it, changed or not.

  A difference raises `ConfigChanged` naming the fields instead, unless `rerun_changed`, or
  `rerun_from` names that stage or an earlier one.
  """
  if rerun_from is not None and rerun_from not in order:
    raise ConfigChanged(f"--rerun_from={rerun_from}: no such stage; the config's stages: "
                        f"{', '.join(order)}")
  start = order.index(rerun_from) if rerun_from is not None else len(order)
  for i, name in enumerate(order[:start]):
    path = os.path.join(stage_dirs[name], CONFIG_FILE)
    if not os.path.exists(path):
      continue
    changed = differences(_read(path), stage_record(cfg, name), f"stages.{name}")
    if not changed:
      continue
    if not rerun_changed:
      raise ConfigChanged(
          f"{'; '.join(changed)} since stage {name} ran in this workdir; pass "
          f"--rerun_from={name} (or --rerun_changed) to run it and the stages after it again "
          "(their outputs are kept as <stage>.replaced-<n>), or use a new --workdir")
    start = i
    break
  return [n for n in order[start:] if os.path.exists(stage_dirs[n])]


def set_aside(stage_dir: str) -> str:
  """Renames a stage directory to the first free `<dir>.replaced-<n>`; returns the new path."""
  n = 1
  while os.path.exists(f"{stage_dir}.replaced-{n}"):
    n += 1
  os.rename(stage_dir, f"{stage_dir}.replaced-{n}")
  return f"{stage_dir}.replaced-{n}"


def record_stage(cfg, name: str, stage_dir: str) -> None:
  """Writes the stage's record when it first starts (a resumed stage keeps its first one)."""
  path = os.path.join(stage_dir, CONFIG_FILE)
  if not os.path.exists(path):
    write_json_atomic(path, stage_record(cfg, name))
