"""Which done stages a re-run starts again (`rl.recorded_config.check_stages`)."""

import os

import pytest

from veripo_jax.config_utils import load_config_file
from veripo_jax.rl.recorded_config import ConfigChanged, check_stages, record_stage

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                    "tiny.py")


@pytest.fixture()
def done(tmp_path):
  """The tiny config with every stage but the last recorded as run in a workdir."""
  cfg = load_config_file(TINY)
  order = list(cfg.stage_order)
  dirs = {name: str(tmp_path / name) for name in order}
  for name in order[:-1]:
    os.makedirs(dirs[name])
    record_stage(cfg, name, dirs[name])
  return cfg, order, dirs


def test_nothing_changed_starts_nothing_again(done):
  cfg, order, dirs = done
  assert check_stages(cfg, dirs, order, rerun_changed=False) == []


def test_rerun_from_names_the_stage_to_start_again_from_changed_or_not(done):
  cfg, order, dirs = done
  # The stages that exist from there on; the last never ran, so nothing of it is set aside.
  assert check_stages(cfg, dirs, order, False, rerun_from=order[3]) == order[3:-1]
  with pytest.raises(ConfigChanged, match=r"--rerun_from=nope: no such stage; the config's "
                     rf"stages: {order[0]}, {order[1]}"):
    check_stages(cfg, dirs, order, False, rerun_from="nope")


def test_a_change_is_refused_unless_the_rerun_starts_at_or_before_it(done):
  cfg, order, dirs = done
  grpo = order.index("grpo")
  cfg.stages.grpo.rounds += 1
  with pytest.raises(ConfigChanged, match=r"stages\.grpo\..*rounds: \d+ -> \d+ since stage grpo "
                     r"ran in this workdir; pass --rerun_from=grpo"):
    check_stages(cfg, dirs, order, False)
  assert check_stages(cfg, dirs, order, False, rerun_from="grpo") == order[grpo:-1]
  assert check_stages(cfg, dirs, order, False, rerun_from=order[1]) == order[1:-1]
  assert check_stages(cfg, dirs, order, True) == order[grpo:-1]
  with pytest.raises(ConfigChanged, match="since stage grpo ran"):
    check_stages(cfg, dirs, order, False, rerun_from=order[grpo + 1])
