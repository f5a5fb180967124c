#!/usr/bin/env bash
# Creates the TPU VM.
set -euo pipefail
USAGE="Usage: TPU_NAME=NAME [ZONE=... ACCELERATOR_TYPE=v5p-64 RUNTIME_VERSION=... SPOT=1] \\
  tpu_scripts/create.sh [--dry-run] [-h|--help]

Creates the Cloud TPU VM TPU_NAME (SPOT=1: a spot VM).
  --dry-run   print the gcloud command instead of running it
  -h, --help  print this help and do nothing"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

if wants_help "$@"; then usage; exit 0; fi
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    *) usage_error "unknown argument: $arg" ;;
  esac
done
require_tpu_name
spot=()
if [[ -n "${SPOT:-}" && "${SPOT}" != 0 ]]; then
  spot=(--spot)
fi
run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone="$ZONE" \
  ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} --accelerator-type="$ACCELERATOR_TYPE" \
  --version="$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"}
