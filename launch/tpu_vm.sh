#!/usr/bin/env bash
# Run on every worker of a Cloud TPU VM slice. JAX discovers the slice topology itself
# (--distributed=auto); the config's mesh spans all chips of all hosts.
# Usage: launch/tpu_vm.sh TPU_NAME ZONE WORKDIR(gs://... or shared path) [flags...]
set -euo pipefail
name=${1:?TPU name}; zone=${2:?zone}; workdir=${3:?workdir}; shift 3
cmd="cd ~/lvt_jax && python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e . \
  && .venv/bin/pip install -q 'jax[tpu]==0.10.2' \
  && .venv/bin/python -m lvt_jax.main --config=configs/bair.py --workdir=$workdir --distributed=auto $*"
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="$cmd"
