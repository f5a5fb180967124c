#!/usr/bin/env bash
# Deletes the TPU VM, after asking (y/N) unless --yes.
set -euo pipefail
USAGE="Usage: TPU_NAME=NAME [ZONE=...] tpu_scripts/delete.sh [--yes] [--dry-run] [-h|--help]

Deletes the Cloud TPU VM TPU_NAME, with everything on its disks. Asks for confirmation (y/N)
on the terminal; without a terminal on stdin it refuses unless --yes.
  -y, --yes   delete without asking
  --dry-run   print the gcloud command instead of running it (asks nothing)
  -h, --help  print this help and do nothing"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

if wants_help "$@"; then usage; exit 0; fi
yes=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -y | --yes) yes=1 ;;
    *) usage_error "unknown argument: $arg" ;;
  esac
done
require_tpu_name
if ((!yes && !DRY_RUN)); then
  if [[ ! -t 0 ]]; then
    die "refusing to delete TPU VM '$TPU_NAME' (zone $ZONE) without confirmation: stdin is" \
      "not a terminal; pass --yes to delete without asking"
  fi
  question="Delete TPU VM '$TPU_NAME' in zone $ZONE${PROJECT:+ (project $PROJECT)} and its disks?"
  read -r -p "$question [y/N] " answer || answer=""
  case "$answer" in
    y | Y | yes | YES | Yes) ;;
    *) die "not deleted" ;;
  esac
fi
# --quiet: gcloud's own prompt is the one answered above.
run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone="$ZONE" \
  ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} --quiet
