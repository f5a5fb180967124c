#!/usr/bin/env bash
# Deletes the TPU VM: TPU_NAME=... tpu_scripts/delete.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --quiet
