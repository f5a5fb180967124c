#!/usr/bin/env bash
# Starts a run on all workers in the background, logging to ~/run.log on each:
#   tpu_scripts/launch.sh --config=configs/X.py --workdir=gs://bucket/run [--config.field=value ...]
# --multihost: jax.distributed initialises from the TPU environment on every worker.
set -euo pipefail
source "$(dirname "$0")/common.sh"
args=$(printf '%q ' "$@")
on_all_workers "cd $REPO_DIR && . ~/venv/bin/activate &&
  nohup python -m veripo_jax.main --multihost $args > ~/run.log 2>&1 < /dev/null &"
