#!/usr/bin/env bash
# The whole benchmark suite on a fresh GPU or TPU machine, in one command: sets up a venv,
# installs the jax build matching the accelerator (same version as requirements.txt), then
# runs `python -m lvt_jax.bench suite` and writes its JSON object to OUT.
#
#   launch/bench_accelerator.sh [OUT.json] [extra bench flags, e.g. --steps=20 --skip=fvd]
#
# Environment: PYTHON=/path/to/python uses that interpreter as is (no venv, no installs);
# CONFIG=configs/NAME.py[:VARIANTS] (default configs/bair.py: the paper's sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench_suite_$(hostname)_$(date +%Y%m%d_%H%M%S).json}
[ $# -gt 0 ] && shift
config=${CONFIG:-configs/bair.py}

if [ -z "${PYTHON:-}" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -r requirements.txt -e .
  PYTHON=.venv/bin/python
  jax_version=$($PYTHON -c "import jax; print(jax.__version__)")
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    cuda=$(nvidia-smi | grep -o "CUDA Version: [0-9]*" | grep -o "[0-9]*$" || echo 12)
    extra=cuda12
    if [ "${cuda:-12}" -ge 13 ]; then extra=cuda13; fi
    echo "NVIDIA GPU (driver CUDA $cuda): installing jax[$extra]==$jax_version" >&2
    .venv/bin/pip install -q "jax[$extra]==$jax_version"
  elif ls /dev/accel* >/dev/null 2>&1 || [ -n "${TPU_NAME:-}${TPU_ACCELERATOR_TYPE:-}" ]; then
    echo "TPU: installing jax[tpu]==$jax_version" >&2
    .venv/bin/pip install -q "jax[tpu]==$jax_version"
  else
    echo "no GPU (nvidia-smi) or TPU (/dev/accel*) found: the suite runs on the CPU" >&2
  fi
fi

$PYTHON -c "import jax; print('devices:', jax.devices())" >&2
$PYTHON -m lvt_jax.bench suite --config="$config" --json "$@" | tee "$out.log"
tail -n 1 "$out.log" > "$out"
echo "suite JSON: $out (readable report: $out.log)" >&2
