#!/usr/bin/env bash
# Several GPU nodes under SLURM: one process per node driving all of its GPUs, the nodes
# joined by jax.distributed (--distributed=auto reads SLURM's variables).
#
#   launch/slurm_gpu.sh [--dry-run] setup [--revision=REV]
#       On a login node: copies the checked-out code (the files git tracks or would
#       track, with your uncommitted edits) or revision REV of this repository to
#       $LVT_HOME/code and builds the environment $LVT_HOME/venv (requirements.txt,
#       jax[cuda12], gcsfs) once: it is rebuilt only when the requirements change.
#       LVT_HOME (default ~/lvt_jax_slurm) must be on a filesystem every node sees.
#   launch/slurm_gpu.sh [--dry-run] submit WORKDIR [main.py flags...]
#       sbatch: NODES nodes x GPUS_PER_NODE GPUs, one task per node; srun starts
#       python -m lvt_jax.main --distributed=auto on every node (default
#       --config=configs/bair.py); a task that fails stops the others. WORKDIR: a
#       folder every node sees (the shared filesystem) or a gs:// bucket. Log:
#       $LVT_HOME/logs/lvt_jax-JOBID.out.
#   --dry-run prints every command instead of running it.
# Environment: LVT_HOME, NODES (2), GPUS_PER_NODE (8), CPUS_PER_TASK (16: data loading),
#   TIME (72:00:00), PARTITION, ACCOUNT, CUDA_EXTRA (cuda12; cuda13 for CUDA 13 drivers),
#   SBATCH_EXTRA (more sbatch flags, space-separated).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/launch/common.sh"
usage="usage: $0 [--dry-run] setup [--revision=REV] | submit WORKDIR [flags...]"
parse_dry_run "$@"; set -- "${args[@]}"
sub=${1:?$usage}; shift
home=${LVT_HOME:-$HOME/lvt_jax_slurm}

case "$sub" in
  setup)
    parse_revision "$usage" "$@"
    step mkdir -p "$home/logs"
    pack_code "$root" "$home/code.tgz" "$revision"
    step bash -c "$(unpack_and_install "$(q "$home/code.tgz")" "$(q "$home/code")" \
      "$(q "$home/venv")" "${CUDA_EXTRA:-cuda12}")"
    ;;
  submit)
    workdir=${1:?$usage}; shift
    if [[ ! -x "$home/venv/bin/python" ]] && (( ! dry_run )); then
      echo "no environment in $home/venv: run $0 setup first" >&2; exit 1
    fi
    cmd="cd $(q "$home/code") && srun --kill-on-bad-exit=1 $(main_command \
      "$(q "$home/venv/bin/python")" "$workdir" "$@")"
    # shellcheck disable=SC2086  # SBATCH_EXTRA holds several flags
    step sbatch --job-name=lvt_jax --nodes="${NODES:-2}" --ntasks-per-node=1 \
      --gpus-per-node="${GPUS_PER_NODE:-8}" --cpus-per-task="${CPUS_PER_TASK:-16}" \
      --time="${TIME:-72:00:00}" --output="$home/logs/%x-%j.out" \
      ${PARTITION:+--partition="$PARTITION"} ${ACCOUNT:+--account="$ACCOUNT"} \
      ${SBATCH_EXTRA:-} --wrap="$cmd"
    ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
