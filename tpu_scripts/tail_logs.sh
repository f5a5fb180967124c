#!/usr/bin/env bash
# Follows the run log (~/run.log) of one worker.
set -euo pipefail
USAGE="Usage: TPU_NAME=NAME [WORKER=N] tpu_scripts/tail_logs.sh [--worker=N] [--lines=N]
  [--dry-run] [-h|--help]

Follows ~/run.log (written by launch.sh) on one worker of the TPU VM; Ctrl-C stops.
  --worker=N  the worker (default: \$WORKER, else 0)
  --lines=N   lines of history shown first (default 100)
  --dry-run   print the gcloud command instead of running it
  -h, --help  print this help and do nothing"
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

if wants_help "$@"; then usage; exit 0; fi
worker=${WORKER:-0}
lines=100
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    --worker=*) worker=${arg#*=} ;;
    --lines=*) lines=${arg#*=} ;;
    *) usage_error "unknown argument: $arg" ;;
  esac
done
[[ "$worker" =~ ^[0-9]+$ ]] || usage_error "--worker: a worker number, not '$worker'"
[[ "$lines" =~ ^[0-9]+$ ]] || usage_error "--lines: a number, not '$lines'"
require_tpu_name
on_workers "$worker" "tail -n $lines -F ~/run.log"
