#!/usr/bin/env bash
# Creates the TPU VM: TPU_NAME=... [ZONE=... ACCELERATOR_TYPE=v5p-64 SPOT=1] tpu_scripts/create.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" ${SPOT:+--spot}
