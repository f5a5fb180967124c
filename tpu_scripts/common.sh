# shellcheck shell=bash
# Shared settings and helpers of the Cloud TPU VM scripts (sourced, not run).
#
# Environment (every script): TPU_NAME (required to act), ZONE, ACCELERATOR_TYPE,
# RUNTIME_VERSION, PROJECT (optional gcloud project), REPO_URL, REPO_DIR.
# Every script takes -h/--help (print usage, do nothing) and --dry-run (print each gcloud
# command, shell-quoted, one a line, and run none of them).
: "${ZONE:=us-central2-b}"
: "${ACCELERATOR_TYPE:=v4-8}"
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"
: "${REPO_URL:=}"                 # git URL of this repository, cloned on every worker
: "${REPO_DIR:=veripo-jax}"
DRY_RUN=0
SCRIPT_NAME=$(basename "$0")

ENV_HELP="Environment: TPU_NAME (required), ZONE (${ZONE}), ACCELERATOR_TYPE (${ACCELERATOR_TYPE}),
  RUNTIME_VERSION (${RUNTIME_VERSION}), PROJECT (gcloud project; default: gcloud's own),
  REPO_DIR (${REPO_DIR})."

# Prints the calling script's usage: the USAGE variable it sets before sourcing this file.
usage() {
  printf '%s\n\n%s\n' "$USAGE" "$ENV_HELP"
}

# A usage mistake: the message and the usage on stderr, exit status 2. Nothing has run.
usage_error() {
  printf '%s: %s\n\n' "$SCRIPT_NAME" "$1" >&2
  usage >&2
  exit 2
}

# die [STATUS] MESSAGE...: the message (its words joined) on stderr, exit STATUS (default 1).
die() {
  local status=1
  if [[ "$1" =~ ^[0-9]+$ ]]; then
    status=$1
    shift
  fi
  printf '%s: %s\n' "$SCRIPT_NAME" "$*" >&2
  exit "$status"
}

# Whether -h or --help is among the arguments (those after a "--" not counted).
wants_help() {
  local arg
  for arg in "$@"; do
    case "$arg" in
      --) return 1 ;;
      -h | --help) return 0 ;;
    esac
  done
  return 1
}

require_tpu_name() {
  [[ -n "${TPU_NAME:-}" ]] || usage_error "set TPU_NAME (the TPU VM name)"
}

# One word quoted for a POSIX shell: as is when it is plain, else in single quotes (a word
# holding a newline in bash's $'...').
shell_quote() {
  local word=$1
  if [[ -n "$word" && "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$word"
  elif [[ "$word" == *$'\n'* ]]; then
    printf '%q' "$word"
  else
    printf "'%s'" "${word//\'/\'\\\'\'}"
  fi
}

# Runs a command, or with --dry-run prints it (one line, copy-pastable) instead.
run() {
  if ((DRY_RUN)); then
    local word line=""
    for word in "$@"; do
      line+="${line:+ }$(shell_quote "$word")"
    done
    printf '%s\n' "$line"
    return 0
  fi
  "$@"
}

# gcloud's project flag, if PROJECT is set (an array: expand as ${PROJECT_ARGS[@]+...}).
PROJECT_ARGS=()
if [[ -n "${PROJECT:-}" ]]; then
  PROJECT_ARGS=(--project="$PROJECT")
fi

# Runs a shell command on one worker ("all" = every worker at once) of the TPU VM. Its status
# is non-zero when the remote command failed: gcloud's own for one worker; with several,
# gcloud exits 0 and only prints "##### Command execution on worker N failed with return
# code R. Continuing." on stderr, so that line fails it too.
on_workers() {
  local worker=$1 command=$2 errors rc=0
  local cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE"
    ${PROJECT_ARGS[@]+"${PROJECT_ARGS[@]}"} --worker="$worker" --command="$command")
  if ((DRY_RUN)) || [[ "$worker" != all ]]; then
    run "${cmd[@]}"
    return
  fi
  errors=$(mktemp)
  # gcloud's stdout as is; its stderr shown and kept in $errors.
  { "${cmd[@]}" 2>&1 1>&3 3>&- | tee "$errors" >&2; } 3>&1 || rc=$?
  if ((rc == 0)) && grep -q 'Command execution on worker .* failed' "$errors"; then
    rc=1
  fi
  rm -f "$errors"
  return "$rc"
}
