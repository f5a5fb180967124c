# Shared settings for the Cloud TPU VM scripts; override any of them in the environment.
: "${TPU_NAME:?set TPU_NAME (the TPU VM name)}"
: "${ZONE:=us-central2-b}"
: "${ACCELERATOR_TYPE:=v4-8}"
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"
: "${REPO_URL:=}"                 # git URL of this repository, cloned on every worker
: "${REPO_DIR:=veripo-jax}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}

# Runs a shell command on every worker of the TPU VM.
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
    --command="$1"
}
