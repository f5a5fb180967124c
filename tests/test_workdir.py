"""A workdir is portable: its stored paths resolve from any cwd and after the workdir moves."""

import os
import shutil

import ml_collections
import pytest

from veripo_jax.data.sources import prepare_data


def _config():
  c = ml_collections.ConfigDict()
  c.data = ml_collections.ConfigDict(dict(
      source="synthetic", world_seed=0, split_sizes={"train": 4},
      world={"tokenizer_corpus_examples": 50}))
  return c


def test_world_resolves_after_move_and_from_another_cwd(tmp_path, monkeypatch):
  first = tmp_path / "run"
  tokenizer_dir, dataset_dir = prepare_data(_config().data, str(first))
  assert os.path.isdir(dataset_dir) and os.path.isdir(tokenizer_dir)
  moved = tmp_path / "elsewhere" / "run"
  moved.parent.mkdir()
  shutil.move(str(first), str(moved))
  other = tmp_path / "cwd"
  other.mkdir()
  monkeypatch.chdir(other)
  tokenizer_dir, dataset_dir = prepare_data(_config().data, os.path.relpath(moved, other))
  assert os.path.isdir(dataset_dir) and os.path.isdir(tokenizer_dir)
  assert os.path.realpath(dataset_dir).startswith(os.path.realpath(moved))
  assert not os.path.exists(first)


def test_a_stage_input_that_is_not_there_names_the_field(tmp_path):
  """The loop reads every declared stage input the same way; a missing one is a config error
  naming the stage's field and the file."""
  from veripo_jax.config_utils import ConfigError
  from veripo_jax.rl.loop import make_stage
  from veripo_jax.rl.plan import PlannedStage
  planned = PlannedStage("dpo", "dpo", config=None, inputs=(("pairs", "verifier"),))
  ctx = type("Ctx", (), {"workdir": str(tmp_path)})()
  with pytest.raises(ConfigError, match=r"^config\.stages\.dpo\.pairs: .*verifier/pairs\.jsonl "
                                        r"does not exist \(did stage 'verifier' finish\?\)"):
    make_stage(ctx, planned)
