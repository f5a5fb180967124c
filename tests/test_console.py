"""What the main command prints: third-party logs hidden unless -v 1, ours kept, the summary."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
from absl import logging as absl_logging

from veripo_jax import console

SITE = os.path.join(os.sep, "venv", "lib", "python3.11", "site-packages")
OURS = os.path.join(console.PACKAGE_DIR, "rl", "loop.py")


class _Collect(logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages: list[str] = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.fixture
def collected():
  """A handler on the root logger (as absl's is under app.run); logging state restored after."""
  root, absl_logger, tf = (logging.getLogger(n) for n in ("", "absl", "tensorflow"))
  levels = [(lg, lg.level) for lg in (root, absl_logger, tf)]
  handler = _Collect()
  root.addHandler(handler)
  try:
    with warnings.catch_warnings():
      yield handler
  finally:
    root.removeHandler(handler)
    for target in [root, absl_logger, *root.handlers]:
      for f in [f for f in target.filters if isinstance(f, console._ThirdPartyFilter)]:
        target.removeFilter(f)
    for lg, level in levels:
      lg.setLevel(level)


def _log_from(path: str, code: str) -> None:
  """Runs `code` as if it were in file `path`: loggers record the caller's file from the frame."""
  exec(compile(code, path, "exec"), {"logging": logging, "absl_logging": absl_logging})


def _emit_everything() -> None:
  # JetStream's orchestrator logs through the root logger itself.
  _log_from(os.path.join(SITE, "jetstream", "core", "orchestrator.py"),
            "logging.info('jetstream info'); logging.warning('jetstream warning')")
  # Orbax (and TFDS, grain) log through absl, as we do.
  _log_from(os.path.join(SITE, "orbax", "checkpoint", "checkpoint_manager.py"),
            "absl_logging.info('orbax info'); absl_logging.warning('orbax warning')")
  _log_from(OURS, "absl_logging.info('our absl info'); absl_logging.debug('our debug')")
  logging.getLogger("veripo_jax.serving.server").info("our named info")
  logging.getLogger("jax._src.xla_bridge").info("jax info")
  logging.getLogger("tensorflow").info("tensorflow info")
  logging.getLogger("jetstream.core").error("jetstream error")
  _log_from(os.path.join(SITE, "tensorboardX", "x2num.py"),
            "logging.getLogger('tensorboardX.x2num').warning('NaN or Inf found in input tensor.')")


def test_default_verbosity_hides_third_party_info_and_keeps_warnings(collected):
  console.setup_logging(0)
  _emit_everything()
  assert collected.messages == ["jetstream warning", "orbax warning", "our absl info",
                                "our named info", "jetstream error"]


def test_verbosity_1_shows_every_library_info(collected):
  console.setup_logging(1)
  _emit_everything()
  assert collected.messages == [
      "jetstream info", "jetstream warning", "orbax info", "orbax warning", "our absl info",
      "our named info", "jax info", "tensorflow info", "jetstream error",
      "NaN or Inf found in input tensor."]


def test_setup_is_repeatable_and_negative_verbosity_hides_our_info(collected):
  console.setup_logging(1)
  console.setup_logging(-1)
  _emit_everything()
  assert collected.messages == ["jetstream warning", "orbax warning", "jetstream error"]
  console.setup_logging(2)
  _emit_everything()
  assert "our debug" in collected.messages


def test_donated_buffer_warning_hidden_unless_verbose(collected):
  message = "Some donated buffers were not usable: float32[960,64], float32[64]."
  for verbosity, shown in ((0, ["other"]), (1, [message, "other"])):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      console.setup_logging(verbosity)
      warnings.warn(message, UserWarning)
      warnings.warn("other", UserWarning)
    assert [str(w.message) for w in caught] == shown


@pytest.mark.parametrize("argv, want", [
    ([], 0), (["--verbosity=1"], 1), (["-v", "2"], 2), (["-v=-1"], -1), (["--v", "1"], 1),
    (["--verbosity", "warning"], -1), (["-v", "x"], 0), (["--", "-v", "1"], 0),
    (["--config=c.py", "-v", "1", "--workdir=w"], 1)])
def test_verbosity_from_argv(argv, want):
  assert console.verbosity_from_argv(["prog", *argv]) == want


def test_native_log_levels_respect_the_user(monkeypatch):
  monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
  monkeypatch.setenv("GRPC_VERBOSITY", "DEBUG")
  console.quiet_native_logs(0)
  assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and os.environ["GRPC_VERBOSITY"] == "DEBUG"


@pytest.mark.parametrize("vendors,libtpu,user,want", [
    (["0x8086"], True, None, "cpu"),               # a CPU machine with libtpu installed
    (["0x8086", "0x1ae0"], True, None, None),      # a TPU VM
    (["0x10de"], True, None, None),                # a GPU machine
    (["0x8086"], False, None, None),               # no libtpu: jax is quiet already
    (["0x8086"], True, "tpu", "tpu"),              # the user's choice stands
], ids=["cpu-with-libtpu", "tpu-vm", "gpu", "no-libtpu", "user-set"])
def test_skip_absent_tpu(tmp_path, monkeypatch, vendors, libtpu, user, want):
  for i, vendor in enumerate(vendors):
    (tmp_path / f"0000:00:0{i}.0").mkdir()
    (tmp_path / f"0000:00:0{i}.0" / "vendor").write_text(vendor + "\n")
  monkeypatch.setattr(console.importlib.util, "find_spec",
                      lambda name: object() if libtpu and name == "libtpu" else None)
  if user is None:
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
  else:
    monkeypatch.setenv("JAX_PLATFORMS", user)
  console.skip_absent_tpu(str(tmp_path))
  assert os.environ.get("JAX_PLATFORMS") == want


REPORT = {
    "evaluations": [
        {"stage": "eval_sft", "follows": "sft", "accuracy": 0.1234, "accuracy_se": 0.0211,
         "length_mean": 118.84, "length_se": 3.2, "inconsistency_rule": 0.5,
         "inconsistency_rule_se": 0.05, "inconsistency_judge": None,
         "inconsistency_judge_se": None, "conclusion_rate": 0.84, "examples": 64},
        {"stage": "eval_grpo", "follows": "grpo", "accuracy": 0.2, "accuracy_se": math.nan,
         "length_mean": 90, "length_se": 2.0, "inconsistency_rule": 0.25,
         "inconsistency_rule_se": 0.04, "inconsistency_judge": 0.125,
         "inconsistency_judge_se": 0.03},
    ],
    "claims": [{"claim": 1, "text": "SFT follows the format.", "held": True, "evidence": "..."},
               {"claim": 2, "text": "GRPO raises accuracy.", "held": False, "evidence": "..."},
               {"claim": 3, "text": "Not measured.", "held": None}],
    "dpo_vs_grpo": {"accuracy_diff": 0.01},
}


def test_format_summary():
  text = console.format_summary(REPORT, "/w/report.md")
  lines = text.splitlines()
  assert lines[1].split("  ")[0] == "stage"
  sft = next(ln for ln in lines if ln.startswith("eval_sft"))
  grpo = next(ln for ln in lines if ln.startswith("eval_grpo"))
  assert sft.split() == ["eval_sft", "sft", "0.123", "±", "0.021", "118.8", "±", "3.2", "0.500",
                         "±", "0.050", "n/a", "0.840"]
  # NaN standard error: the value alone; no conclusion rate: n/a.
  assert grpo.split() == ["eval_grpo", "grpo", "0.200", "90.0", "±", "2.0", "0.250", "±",
                          "0.040", "0.125", "±", "0.030", "n/a"]
  # Columns line up: every row's cells start where the header's do.
  header = lines[1]
  assert sft.index("118.8") == grpo.index("90.0") == header.index("length")
  assert "  held      1  SFT follows the format." in lines
  assert "  NOT held  2  GRPO raises accuracy." in lines
  assert "  n/a       3  Not measured." in lines
  assert lines[-1] == "Full report: /w/report.md"
  assert "{" not in text


def test_format_summary_of_an_empty_report():
  assert console.format_summary({}) == "Held-out evaluations: none in the report."


def test_run_summary_reads_report_json_else_lists_stages(tmp_path):
  os.makedirs(tmp_path / "stages" / "sft")
  (tmp_path / "stages" / "sft" / "done.json").write_text("{}")
  text = console.run_summary(str(tmp_path), ("sft", "eval_sft"))
  assert "report.json not found" in text
  assert [ln.split() for ln in text.splitlines()[3:5]] == [["sft", "done"],
                                                           ["eval_sft", "not", "finished"]]
  assert text.endswith(f"Full report: {tmp_path / 'report.md'}")
  (tmp_path / "report.json").write_text(json.dumps(REPORT))
  assert console.run_summary(str(tmp_path), ("sft",)) == console.format_summary(
      REPORT, str(tmp_path / "report.md"))


def test_run_summary_leads_with_benchmark_scores(tmp_path):
  stage = tmp_path / "stages" / "benchmarks"
  os.makedirs(stage)
  row = dict(benchmark="vsi_bench", score=41.25, scored=9, items=11, rule_inconsistency=0.125,
             judge_inconsistency=None, paper={"VerIPO-7B": 41.8, "Qwen2.5-VL-7B": 37.5,
                                              "GPT-4o": 34.0})
  (stage / "eval_report.json").write_text(json.dumps({"benchmarks": [row]}))
  (tmp_path / "report.json").write_text(json.dumps({"claims": [{"claim": 1, "held": None}]}))
  lines = console.run_summary(str(tmp_path), ("benchmarks",)).splitlines()
  assert lines[0] == "Benchmarks (the authors' protocol and scoring):"
  assert lines[3].split() == ["benchmarks", "vsi_bench", "41.2", "VerIPO-7B", "41.8,",
                              "Qwen2.5-VL-7B", "37.5", "9/11", "12.5", "n/a"]
  assert lines[4] == f"Eval report: {stage / 'eval_report.md'}"
  assert "Claims:" not in lines                      # none measured: not listed


def test_format_duration():
  assert [console.format_duration(s) for s in (4.25, 65, 3725)] == [
      "4.2 s", "1 min 05 s", "1 h 02 min"]


_SERVER_SCRIPT = textwrap.dedent("""
    import logging, sys
    from absl import app, flags
    from veripo_jax import console

    made = logging.getLogRecordFactory()
    count = 0

    def counting_factory(*args, **kwargs):               # every record, before any filter
      global count
      record = made(*args, **kwargs)
      count += record.pathname.endswith("orchestrator.py") and record.levelno == logging.INFO
      return record

    def main(argv):
      console.setup_logging(flags.FLAGS.verbosity)       # as veripo_jax.main does
      logging.setLogRecordFactory(counting_factory)
      from flax import nnx
      from veripo_jax.models.qwen2_5_vl import Qwen25VL, get_preset
      from veripo_jax.serving.client import JudgeClient
      from veripo_jax.serving.engine import QwenEngine
      from veripo_jax.serving.server import start_server
      engine = QwenEngine(Qwen25VL(get_preset("tiny"), rngs=nnx.Rngs(0)),
                          max_concurrent_decodes=1, max_prefill_length=16, max_decode_length=4)
      with start_server(engine) as server, JudgeClient(server.address, timeout_s=120) as c:
        assert len(c.generate_ids([2, 3, 4], 2)) >= 1
      print("orchestrator INFO records:", count)

    app.run(main, argv=sys.argv)
""")


@pytest.mark.slow
@pytest.mark.parametrize("verbosity", [0, 1])
def test_jetstream_info_reaches_stderr_only_with_verbosity_1(verbosity):
  """The real orchestrator, imported after the setup as the verifier stage does, serving one
  request under absl's app.run with the --verbosity flag."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("TF_CPP_MIN_LOG_LEVEL", None)
  proc = subprocess.run([sys.executable, "-c", _SERVER_SCRIPT, f"--verbosity={verbosity}"],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  count = int(proc.stdout.rsplit(":", 1)[1])
  assert count > 0                  # JetStream did log at INFO ...
  shown = [ln for ln in proc.stderr.splitlines() if "orchestrator.py" in ln]
  if verbosity == 0:
    assert not shown, shown[:5]     # ... and none of it reached stderr by default
  else:
    assert len(shown) >= count, (len(shown), count)
