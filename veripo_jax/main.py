"""Command-line entry point: `python -m veripo_jax.main --config=configs/X.py --workdir=DIR`.

Runs the stages `config.stage_order` names, in order (`veripo_jax.rl.loop`);
`--config.<field>=value` overrides any field; re-running with the same workdir resumes.
"""

from __future__ import annotations

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from veripo_jax.parallel import multihost
from veripo_jax.rl.loop import ConfigError, run
from veripo_jax.rl.stage import Preempted
from veripo_jax.train.compile_cache import enable_compilation_cache

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml-collections config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for outputs; re-use resumes.")
_MULTIHOST = flags.DEFINE_bool("multihost", False,
                               "Initialise jax.distributed (TPU pods: automatic; elsewhere from "
                               "VERIPO_COORDINATOR / VERIPO_NUM_PROCESSES / VERIPO_PROCESS_ID).")

__all__ = ["main", "run"]      # `run(cfg, workdir)` is the loop (veripo_jax.rl.loop), re-exported


def main(argv):
  del argv
  cfg = _CONFIG.value
  if cfg is None or _WORKDIR.value is None:
    raise app.UsageError("--config and --workdir are required")
  if _MULTIHOST.value:
    multihost.initialize()
  cache = enable_compilation_cache(cfg.get("compilation_cache_dir", ""), _WORKDIR.value)
  logging.info("compilation cache: %s", cache or "off")
  try:
    summaries = run(cfg, _WORKDIR.value)
  except ConfigError as e:
    raise app.UsageError(str(e)) from e
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
  for name, summary in summaries.items():
    print(f"{name}: {summary}")


if __name__ == "__main__":
  app.run(main)
