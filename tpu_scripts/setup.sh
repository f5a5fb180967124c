#!/usr/bin/env bash
# Installs the repo on every worker and checks that the config's programs fit the slice.
set -euo pipefail
UV_VERSION=0.13.8
USAGE="Usage: TPU_NAME=NAME REPO_URL=GIT_URL [ACCELERATOR_TYPE=...] tpu_scripts/setup.sh
  --config=configs/X.py[:ARG] | --skip-compile-check   [--dry-run] [-h|--help]

On every worker: clones REPO_URL into REPO_DIR under home (or pulls it), installs Python
3.11 with uv (the image's python3 is 3.10; uv $UV_VERSION comes from PyPI with the image's pip,
and \`uv python install 3.11\` downloads a standalone CPython build, so the VM needs internet
beyond PyPI; no sudo or apt), makes ~/venv with it (replacing a venv of an older Python), and
installs requirements-tpu.txt (requirements.txt + jax[tpu]) and the package into it. Then, on
worker 0, compiles the config's programs for the slice before the first launch:
  python -m veripo_jax.compile_check --config=CONFIG --topology=\$ACCELERATOR_TYPE
and fails if one does not fit.
  --config=FILE[:ARG]    the config to check (the one launch.sh will run)
  --skip-compile-check   skip that check (then --config is not needed)
  --dry-run              print the gcloud commands instead of running them
  -h, --help             print this help and do nothing
Exit status: non-zero when the install or the compile check failed."
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "$0")/common.sh"

if wants_help "$@"; then usage; exit 0; fi
config="" skip_check=0
while (($#)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --skip-compile-check) skip_check=1 ;;
    --config=*) config=${1#*=} ;;
    --config)
      (($# >= 2)) || usage_error "--config needs a value"
      config=$2
      shift ;;
    *) usage_error "unknown argument: $1" ;;
  esac
  shift
done
if ((!skip_check)) && [[ -z "$config" ]]; then
  usage_error "--config is required (the config to compile-check), or --skip-compile-check"
fi
require_tpu_name
[[ -n "$REPO_URL" ]] || usage_error "set REPO_URL (git URL of this repository)"

repo=$(printf '%q' "$REPO_DIR")
url=$(printf '%q' "$REPO_URL")
# Each worker runs these in its home (REPO_DIR is relative to it unless absolute).
install="set -e; [ -d $repo ] || git clone $url $repo; cd $repo; git pull --ff-only;"
install+=" python3 -m pip install --user -q uv==$UV_VERSION;"
install+=" export PATH=\"\$HOME/.local/bin:\$PATH\";"
install+=" uv python install 3.11;"
install+=" if ! ~/venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'"
install+=" 2>/dev/null;"
install+=" then rm -rf ~/venv; uv venv --seed --python 3.11 ~/venv; fi;"
install+=" . ~/venv/bin/activate; pip install -q -r requirements-tpu.txt -e .;"
install+=" python -c 'import jax, sys;"
install+=" print(sys.version.split()[0], jax.process_index(), jax.device_count())'"
rc=0
on_workers all "$install" || rc=$?
if ((rc)); then
  die "$rc" "the install failed on at least one worker (status $rc; see above)"
fi

if ((skip_check)); then
  echo "$SCRIPT_NAME: compile check skipped (--skip-compile-check)" >&2
  exit 0
fi
check="set -e; cd $repo; . ~/venv/bin/activate;"
check+=" python -m veripo_jax.compile_check $(printf '%q' "--config=$config")"
check+=" $(printf '%q' "--topology=$ACCELERATOR_TYPE")"
rc=0
on_workers 0 "$check" || rc=$?
if ((rc)); then
  die "$rc" "the compile check of $config for $ACCELERATOR_TYPE failed (status $rc; see" \
    "above: a program that does not fit, or a check that could not run); fix the config, or" \
    "pass --skip-compile-check to set up without it"
fi
