"""Command-line entry point: `python -m veripo_jax.main --config=configs/X.py --workdir=DIR`.

Runs the stages `config.stage_order` names, in order (`veripo_jax.rl.loop`);
`--config.<field>=value` overrides any field; re-running with the same workdir resumes (a
stage whose config changed since it ran stops the run, or with `--rerun_changed` runs again).

Console: one line as each stage starts and ends, progress bars (plain lines every 30 s when
stderr is not a terminal), and a summary table from `WORKDIR/report.json` at the end. Other
libraries' INFO logs (JetStream, Orbax, TFDS, TensorFlow, grain, jax) are hidden; absl's standard
verbosity flag brings them back:

  -v -1   warnings and errors only
  -v 0    the default: our INFO lines, other libraries' warnings and errors
  -v 1    INFO from every library too (and JAX's "donated buffers" warning)
  -v 2    DEBUG from everything (absl's usual -v 1)

TF_CPP_MIN_LOG_LEVEL (2 by default, 0 at -v 1) and GRPC_VERBOSITY, if set, are left alone.
"""

from __future__ import annotations

import os
import sys
import time

from veripo_jax import console

if __name__ == "__main__":
  # Before TensorFlow / gRPC / XLA load: they read their log thresholds once.
  console.quiet_native_logs(console.verbosity_from_argv(sys.argv))
  console.skip_absent_tpu()

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from veripo_jax.parallel import multihost  # noqa: E402
from veripo_jax.config_utils import ConfigError  # noqa: E402
from veripo_jax.rl.loop import run  # noqa: E402
from veripo_jax.rl.stage import Preempted  # noqa: E402
from veripo_jax.train.compile_cache import enable_compilation_cache  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs; re-use resumes.")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Initialise jax.distributed (TPU pods: automatic; elsewhere from "
                               "VERIPO_COORDINATOR / VERIPO_NUM_PROCESSES / VERIPO_PROCESS_ID).")
_RERUN_CHANGED = flags.DEFINE_bool(
    "rerun_changed", False, "A stage that ran in this workdir with another config runs again, "
    "with every stage after it (their old outputs kept as stages/<name>.replaced-<n>); without "
    "it such a run stops before starting, naming the changed fields.")

_RERUN_FROM = flags.DEFINE_string(
    "rerun_from", None, "Run this stage and every stage after it again, changed or not (their "
    "old outputs kept as stages/<name>.replaced-<n>); a config change in an earlier done stage "
    "still stops the run.")

__all__ = ["main", "run"]      # `run(cfg, workdir)` is the loop (veripo_jax.rl.loop), re-exported

_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def config_error(message: str) -> None:
  """A config problem ends the run with one line on stderr and exit status 2, no traceback."""
  print(f"config error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _override_message(argv: list[str], error: Exception) -> str:
  """ml-collections' `'\\'roundz\\'\\nDid you mean "rounds"...'` as one line naming the flag."""
  text = str(error.args[0] if error.args else error).strip("'\"").replace("\\'", "'")
  key, _, hint = text.partition("\\n")
  key = key.strip("'\"")
  flag = next((a.split("=", 1)[0] for a in argv[1:]
               if a.startswith("--config.") and key in a.split("=", 1)[0].split(".")), None)
  where = flag or "--config"
  hint = f" ({hint.strip()})" if hint else ""
  return f"{where}: no field {key!r}{hint}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a user's mistakes as one line: `--help` exits 0 (absl: 1); an
  unknown flag, a misspelled config field or a badly typed override exits 2 naming it."""
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    if any(a in _HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    config_error(str(e).splitlines()[0])
  except (AttributeError, KeyError) as e:
    config_error(_override_message(argv, e))
  except (TypeError, ValueError) as e:
    config_error(" ".join(str(e).split()))


def main(argv):
  del argv
  console.setup_logging(flags.FLAGS.verbosity)
  cfg = _CONFIG.value
  if cfg is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required")
  if _MULTIHOST.value:
    multihost.initialize()
  cache = enable_compilation_cache(cfg.get("compilation_cache_dir", ""), _WORKDIR.value)
  logging.info("compilation cache: %s", cache or "off")
  start = time.monotonic()
  try:
    run(cfg, _WORKDIR.value, rerun_changed=_RERUN_CHANGED.value,
        rerun_from=_RERUN_FROM.value)
  except ConfigError as e:
    config_error(str(e))
  except Preempted as e:
    logging.warning("%s; re-run with the same --workdir to resume", e)
    sys.exit(0)
  except BaseException:
    if jax.process_count() > 1:
      # The peers would wait forever in their next collective, and this process at exit
      # for them: report and leave at once so the whole job fails fast.
      logging.exception("fatal error on process %d", jax.process_index())
      logging.flush()
      os._exit(1)
    raise
  if jax.process_index() == 0:
    print(f"\nRun finished in {console.format_duration(time.monotonic() - start)}.\n"
          f"{console.run_summary(_WORKDIR.value, cfg.stage_order)}", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
