#!/usr/bin/env bash
# Starts a run on all workers in the background, logging to ~/run.log on each.
set -euo pipefail
USAGE="Usage: TPU_NAME=NAME tpu_scripts/launch.sh --config=configs/X.py --workdir=DIR
  [--config.FIELD=VALUE ...] [--rerun_changed | --rerun_from=STAGE] [-v N]
  [--check-seconds=N] [--dry-run]
  [-h|--help] [-- MORE_MAIN_ARGS...]

Starts \`python -m veripo_jax.main --multihost --config=... --workdir=...\` in the background on
every worker (in its checkout REPO_DIR with ~/venv, as tpu_scripts/setup.sh left them), logging
to ~/run.log (tpu_scripts/tail_logs.sh follows it). DIR must be one directory every worker
sees (a gcsfuse or Filestore mount): the stages write it with plain file operations and hand
policies on through it. The paper's recipe on a v5p-128 (ACCELERATOR_TYPE=v5p-128; its
placeholders to override are in its docstring):
  tpu_scripts/launch.sh --config=configs/veripo_qwen2_5_vl_7b.py --workdir=/mnt/shared/veripo \\
      --config.model.checkpoint=/path/to/Qwen2.5-VL-7B-Instruct ...

  --config=FILE[:ARG]   the ml-collections config (required)
  --workdir=DIR         the shared run directory (required); re-use resumes
  --config.FIELD=VALUE, --rerun_changed, --rerun_from=STAGE, -v N: passed on to
                        veripo_jax.main, as is everything after --
  --check-seconds=N     after starting, wait N seconds (default 30; 0: don't) and fail, with
                        the log's tail, on any worker whose run already exited non-zero
  --dry-run             print the gcloud command instead of running it
  -h, --help            print this help and do nothing
Refuses to start where ~/run.pid names a run still going. Exit status: gcloud's, non-zero
when the remote command failed on a worker (no repository or venv, a run already going, a run
that exited non-zero within --check-seconds)."
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

if wants_help "$@"; then usage; exit 0; fi
config="" workdir="" check_seconds=30 main_args=()
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --check-seconds=*) check_seconds=${1#*=} ;;
    --config=*) config=${1#*=} ;;
    --workdir=*) workdir=${1#*=} ;;
    --config | --workdir)
      (($# >= 2)) || usage_error "$1 needs a value"
      if [[ "$1" == --config ]]; then config=$2; else workdir=$2; fi
      shift ;;
    --config.*=*) main_args+=("$1") ;;
    --config.*) usage_error "write a config override as $1=VALUE" ;;
    --rerun_changed | --norerun_changed | --rerun_from=* | -v=* | --verbosity=*)
      main_args+=("$1") ;;
    --rerun_from) usage_error "write --rerun_from=STAGE" ;;
    -v | --verbosity)
      (($# >= 2)) || usage_error "$1 needs a value"
      main_args+=("$1" "$2")
      shift ;;
    --) shift; main_args+=("$@"); break ;;
    --multihost) usage_error "--multihost is always passed" ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done
[[ -n "$config" ]] || usage_error "--config is required"
[[ -n "$workdir" ]] || usage_error "--workdir is required"
[[ "$check_seconds" =~ ^[0-9]+$ ]] ||
  usage_error "--check-seconds: a number of seconds, not '$check_seconds'"
require_tpu_name
if [[ "$workdir" != /* ]]; then
  echo "$SCRIPT_NAME: warning: --workdir=$workdir is relative: each worker resolves it in its" \
    "own checkout ($REPO_DIR); a multi-host run needs one shared directory" >&2
fi

# The command each worker runs in its home (one line; "$" in single quotes expands there): fail
# (non-zero) without a checkout or venv, or while a run is going; start the run detached; after
# check_seconds, fail if it has already exited non-zero.
# shellcheck disable=SC2016
remote_command() {
  local args repo
  args=$(printf '%q ' --multihost --config="$config" --workdir="$workdir" \
    ${main_args[@]+"${main_args[@]}"})
  repo=$(printf '%q' "$REPO_DIR")
  printf '%s' "set -e; cd $repo; . ~/venv/bin/activate;" \
    ' if [ -f ~/run.pid ] && old=$(cat ~/run.pid) && kill -0 "$old" 2>/dev/null &&' \
    ' grep -q veripo_jax.main "/proc/$old/cmdline" 2>/dev/null; then' \
    ' echo "$(hostname): a run is already going (pid $old, ~/run.pid); stop it first" >&2;' \
    ' exit 1; fi;' \
    " nohup python -m veripo_jax.main $args> ~/run.log 2>&1 < /dev/null &" \
    ' pid=$!; echo "$pid" > ~/run.pid;'
  if ((check_seconds > 0)); then
    printf '%s' " sleep $check_seconds;" \
      ' if kill -0 "$pid" 2>/dev/null;' \
      ' then echo "$(hostname): running (pid $pid), log ~/run.log";' \
      ' else rc=0; wait "$pid" || rc=$?;' \
      ' echo "$(hostname): the run exited with status $rc; ~/run.log ends:" >&2;' \
      ' tail -n 20 ~/run.log >&2; exit "$rc"; fi'
  else
    printf '%s' ' echo "$(hostname): started (pid $pid), log ~/run.log"'
  fi
}

rc=0
on_workers all "$(remote_command)" || rc=$?
if ((rc)); then
  die "$rc" "the run failed to start on at least one worker (status $rc; see above)"
fi
