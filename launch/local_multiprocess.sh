#!/usr/bin/env bash
# Several CPU processes on this machine, talking through jax.distributed (gloo): a
# rehearsal of a multi-host run. Usage: launch/local_multiprocess.sh WORKDIR [extra main.py flags...]
# Environment: NPROC (processes, default 2), DEVICES (CPU devices per process, default 1),
# PORT (coordinator port, default 12355), PYTHON (default: python), CONFIG (default
# configs/demo.py:tiny), XLA_EXTRA_FLAGS (more XLA flags). Exits non-zero when a process
# fails; the others are then stopped.
set -euo pipefail
workdir=${1:?usage: $0 WORKDIR [flags...]}; shift
nproc=${NPROC:-2}
port=${PORT:-12355}
python=${PYTHON:-python}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < nproc; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=${DEVICES:-1} ${XLA_EXTRA_FLAGS:-}" \
  JAX_PLATFORMS=cpu \
  "$python" -m lvt_jax.main --config="${CONFIG:-configs/demo.py:tiny}" --workdir="$workdir" \
    --coordinator_address=localhost:$port --num_processes="$nproc" --process_id=$i "$@" &
  pids+=($!)
done
status=0
for _ in "${pids[@]}"; do
  if ! wait -n; then
    status=1
    kill "${pids[@]}" 2>/dev/null || true  # a lone process would wait for its peers
  fi
done
exit $status
