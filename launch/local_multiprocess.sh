#!/usr/bin/env bash
# Two CPU processes on this machine, talking through jax.distributed (gloo): a rehearsal of
# a multi-host run. Usage: launch/local_multiprocess.sh WORKDIR [extra main.py flags...]
set -euo pipefail
workdir=${1:?usage: $0 WORKDIR [flags...]}; shift
port=${PORT:-12355}
for i in 0 1; do
  XLA_FLAGS=--xla_force_host_platform_device_count=1 JAX_PLATFORMS=cpu \
  python -m lvt_jax.main --config=configs/demo.py:tiny --workdir="$workdir" \
    --coordinator_address=localhost:$port --num_processes=2 --process_id=$i "$@" &
done
wait
