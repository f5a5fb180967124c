#!/usr/bin/env bash
# Starts a run on all workers in the background, logging to ~/run.log on each:
#   tpu_scripts/launch.sh --config=configs/X.py --workdir=DIR [--config.field=value ...]
# DIR must be one directory every worker sees (a gcsfuse or Filestore mount): the stages write
# it with plain file operations and hand policies on through it. The paper's recipe on a
# v5p-128 (ACCELERATOR_TYPE=v5p-128; its placeholders to override are in its docstring):
#   tpu_scripts/launch.sh --config=configs/veripo_qwen2_5_vl_7b.py --workdir=/mnt/shared/veripo \
#       --config.model.checkpoint=/path/to/Qwen2.5-VL-7B-Instruct ...
# --multihost: jax.distributed initialises from the TPU environment on every worker.
set -euo pipefail
source "$(dirname "$0")/common.sh"
args=$(printf '%q ' "$@")
on_all_workers "cd $REPO_DIR && . ~/venv/bin/activate &&
  nohup python -m veripo_jax.main --multihost $args > ~/run.log 2>&1 < /dev/null &"
