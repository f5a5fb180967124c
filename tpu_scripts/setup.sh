#!/usr/bin/env bash
# Clones the repo and installs it with jax[tpu] on every worker: REPO_URL=... tpu_scripts/setup.sh
set -euo pipefail
source "$(dirname "$0")/common.sh"
: "${REPO_URL:?set REPO_URL (git URL of this repository)}"
on_all_workers "set -e; [ -d $REPO_DIR ] || git clone $REPO_URL $REPO_DIR; cd $REPO_DIR && git pull --ff-only;
  python3 -m venv ~/venv && . ~/venv/bin/activate && pip install -q -r requirements.txt -e . &&
  pip install -q -U 'jax[tpu]==0.10.2' && python -c 'import jax; print(jax.process_index(), jax.device_count())'"
