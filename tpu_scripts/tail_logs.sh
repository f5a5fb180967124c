#!/usr/bin/env bash
# Follows the run log of one worker (default 0): [WORKER=3] tpu_scripts/tail_logs.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker="${WORKER:-0}" \
  --command="tail -n 100 -f ~/run.log"
