"""The command line a user types: --help exits 0, mistakes exit 2 with one line and no traceback,
before anything is written."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args, cwd):
  return subprocess.run([sys.executable, "-m", "veripo_jax.main", *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_help_exits_zero(tmp_path):
  proc = _main("--help", cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "--workdir" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("flag, expected", [
    ("--config.stages.grpo.roundz=2",
     "config error: --config.stages.grpo.roundz: no field 'roundz' (Did you mean \"rounds\""),
    ("--config.stages.grpo.rounds=abc", "config error: flag --config.stages.grpo.rounds=abc: "),
    ("--workdirr=x", "config error: Unknown command line flag 'workdirr'"),
])
def test_mistakes_exit_two_with_one_line(tmp_path, flag, expected):
  workdir = tmp_path / "run"
  proc = _main(f"--config={REPO}/configs/tiny.py", f"--workdir={workdir}", flag, cwd=tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(expected), lines[-5:]
  assert not workdir.exists()
