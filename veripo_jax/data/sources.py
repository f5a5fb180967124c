"""Where a run's examples and tokenizer come from: `config.data.source` names a registered data
source, which returns (tokenizer_dir, dataset_dir) for the run.

  tfds       a built TFDS ArrayRecord dataset (`data.dataset_dir`) and a tokenizer directory
             (`data.tokenizer_dir`), e.g. a checkpoint's;
  synthetic  the synthetic video-QA world (`data.world`, `data.world_seed`, `data.split_sizes`),
             built once into WORKDIR/world and found again from any cwd;
  tokenizer  no training examples, only a tokenizer directory (`data.tokenizer_dir`): runs that
             only evaluate, reading their benchmarks' question files themselves.

A new source is one `register_data_source` call, naming the `config.data` fields it reads: a
field no source reads is a config error (a typo, or a field left from an older config).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils

from veripo_jax.config_utils import ConfigError, closest, from_config, reject_unknown
from veripo_jax.fileio import write_text_atomic

Prepare = Callable[[Any, str], tuple[str, str]]   # (config.data, workdir) -> (tokenizer, dataset)
DATA_SOURCES: dict[str, Prepare] = {}
_FIELDS: set[str] = {"source"}


def register_data_source(name: str, prepare: Prepare, fields: tuple[str, ...]) -> None:
  if name in DATA_SOURCES:
    raise ValueError(f"data source {name!r} is already registered")
  DATA_SOURCES[name] = prepare
  _FIELDS.update(fields)


def check_source(data) -> None:
  """A config error unless `data.source` names a registered source and every field of
  `config.data` is one a source reads."""
  name = data.get("source")
  if name not in DATA_SOURCES:
    raise ConfigError(f"config.data.source: unknown {name!r}{closest(str(name), DATA_SOURCES)}; "
                      f"known: {sorted(DATA_SOURCES)}")
  reject_unknown(data, _FIELDS, "config.data")


def prepare_data(data, workdir: str) -> tuple[str, str]:
  """(tokenizer_dir, dataset_dir) of the run's data source."""
  check_source(data)
  return DATA_SOURCES[data.source](data, workdir)


def _tfds(data, workdir: str) -> tuple[str, str]:
  del workdir
  if not data.get("dataset_dir") or not data.get("tokenizer_dir"):
    raise ConfigError("config.data: source 'tfds' needs both dataset_dir and tokenizer_dir")
  return data.tokenizer_dir, data.dataset_dir


def _synthetic(data, workdir: str) -> tuple[str, str]:
  from veripo_jax.data.synthetic.build import build_world
  from veripo_jax.data.synthetic.world import WorldConfig
  world = from_config(WorldConfig, data.get("world", {}), "config.data.world")
  root = os.path.join(workdir, "world")
  marker = os.path.join(root, "dataset_dir.txt")
  if jax.process_index() == 0 and not os.path.exists(marker):
    paths = build_world(root, seed=data.get("world_seed", 0),
                        split_sizes=dict(data.split_sizes), world=world)
    # Relative to the world's root, so the workdir resumes from any cwd and after a move.
    write_text_atomic(marker, os.path.relpath(paths.dataset_dir, root))
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("veripo_world_built")
  with open(marker, encoding="utf-8") as f:
    return os.path.join(root, "tokenizer"), os.path.join(root, f.read().strip())


def _tokenizer_only(data, workdir: str) -> tuple[str, str]:
  del workdir
  if not data.get("tokenizer_dir"):
    raise ConfigError("config.data.tokenizer_dir: source 'tokenizer' needs it")
  return data.tokenizer_dir, ""


register_data_source("tfds", _tfds, fields=("dataset_dir", "tokenizer_dir"))
register_data_source("synthetic", _synthetic, fields=("world", "world_seed", "split_sizes"))
register_data_source("tokenizer", _tokenizer_only, fields=("tokenizer_dir",))
