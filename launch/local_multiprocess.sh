#!/usr/bin/env bash
# Two CPU processes on this machine, talking through jax.distributed (gloo): a rehearsal of
# a multi-host run. Usage: launch/local_multiprocess.sh WORKDIR [extra main.py flags...]
# Environment: PORT (coordinator port, default 12355), PYTHON (default: python).
# Exits non-zero when either process fails; the other one is then stopped.
set -euo pipefail
workdir=${1:?usage: $0 WORKDIR [flags...]}; shift
port=${PORT:-12355}
python=${PYTHON:-python}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for i in 0 1; do
  XLA_FLAGS=--xla_force_host_platform_device_count=1 JAX_PLATFORMS=cpu \
  "$python" -m lvt_jax.main --config=configs/demo.py:tiny --workdir="$workdir" \
    --coordinator_address=localhost:$port --num_processes=2 --process_id=$i "$@" &
  pids+=($!)
done
status=0
for _ in "${pids[@]}"; do
  if ! wait -n; then
    status=1
    kill "${pids[@]}" 2>/dev/null || true  # a lone process would wait for its peer
  fi
done
exit $status
