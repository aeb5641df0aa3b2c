#!/usr/bin/env bash
# A Cloud TPU VM slice (v4-32, v5e-16, ...): every worker gets this code and one
# environment, then all workers start the run together. JAX finds the slice itself
# (--distributed=auto) and the config's mesh spans all chips of all hosts.
#
#   launch/tpu_vm.sh [--dry-run] setup TPU_NAME ZONE [--revision=REV]
#       Copies the checked-out code (the files git tracks or would track, with your
#       uncommitted edits) or revision REV of this repository to ~/lvt_jax on every
#       worker, and builds the environment ~/lvt_jax_venv there (requirements.txt,
#       jax[tpu], gcsfs) once: a worker whose environment matches requirements.txt and
#       pyproject.toml keeps it. Run it again after changing the code.
#   launch/tpu_vm.sh [--dry-run] run TPU_NAME ZONE WORKDIR [--detach] [main.py flags...]
#       Starts python -m lvt_jax.main --distributed=auto on all workers (default
#       --config=configs/bair.py). WORKDIR is shared by all workers: a gs:// bucket.
#       --detach: the workers run on after this command returns, logging to
#       ~/lvt_jax.log on each.
#   --dry-run prints every command, one per line, instead of running it.
# Environment: PROJECT (gcloud --project); GCLOUD (default gcloud).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$root/launch/common.sh"
usage="usage: $0 [--dry-run] setup TPU_NAME ZONE [--revision=REV] | run TPU_NAME ZONE WORKDIR [--detach] [flags...]"
parse_dry_run "$@"; set -- "${args[@]}"
sub=${1:?$usage}; name=${2:?$usage}; zone=${3:?$usage}; shift 3
gcloud=${GCLOUD:-gcloud}
where=(--zone="$zone" ${PROJECT:+--project="$PROJECT"})

case "$sub" in
  setup)
    parse_revision "$usage" "$@"
    tarball=${TMPDIR:-/tmp}/lvt_jax-code-$$.tgz
    pack_code "$root" "$tarball" "$revision"
    step "$gcloud" compute tpus tpu-vm scp "$tarball" "$name:lvt_jax.tgz" "${where[@]}" --worker=all
    step rm -f "$tarball"
    step "$gcloud" compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
      --command="$(unpack_and_install '~/lvt_jax.tgz' '~/lvt_jax' '~/lvt_jax_venv' tpu)"
    ;;
  run)
    workdir=${1:?$usage}; shift
    detach=0
    flags=()
    for a in "$@"; do
      if [[ "$a" == --detach ]]; then detach=1; else flags+=("$a"); fi
    done
    remote="cd ~/lvt_jax && test -x ~/lvt_jax_venv/bin/python || { echo \"no environment on \$(hostname): run launch/tpu_vm.sh setup first\" >&2; exit 1; }; "
    cmd="$(main_command '~/lvt_jax_venv/bin/python' "$workdir" "${flags[@]}")"
    if (( detach )); then
      remote+="nohup $cmd > ~/lvt_jax.log 2>&1 < /dev/null & echo \"\$(hostname): started, log in ~/lvt_jax.log\""
    else
      remote+="$cmd"
    fi
    step "$gcloud" compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all --command="$remote"
    ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
