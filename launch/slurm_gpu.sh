#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, all local GPUs per process.
# JAX reads the SLURM environment (--distributed=auto). Submit: sbatch launch/slurm_gpu.sh WORKDIR
#SBATCH --job-name=lvt_jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --time=72:00:00
set -euo pipefail
workdir=${1:?usage: sbatch $0 WORKDIR [flags...]}; shift
# Install once beforehand: pip install -r requirements.txt -e . && pip install 'jax[cuda12]==0.10.2'
srun python -m lvt_jax.main --config=configs/bair.py --workdir="$workdir" --distributed=auto "$@"
