"""Multi-host start-up: jax.distributed from flags or the usual environment variables.

A single-process run needs nothing. Multi-process: pass --coordinator_address,
--num_processes and --process_id (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID); on TPU pods and SLURM, --distributed=auto lets JAX detect the cluster.
Under SLURM JAX assumes one process per GPU (it gives each task the GPU numbered by its
SLURM_LOCALID); with one task per node (launch/slurm_gpu.sh) the task gets all of the
node's GPUs instead.
"""
from __future__ import annotations

import os

import jax


def initialize(mode: str = "env", coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
    if mode == "off":
        return
    if mode == "auto":
        jax.distributed.initialize(local_device_ids=slurm_local_device_ids(os.environ))
        return
    addr = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    n = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    if not addr and (n or 1) <= 1:
        return  # single process
    missing = [name for name, v in (("coordinator_address", addr), ("num_processes", n),
                                    ("process_id", pid)) if v is None]
    if missing:
        raise ValueError(f"multi-process run needs {missing} as well (flags --{missing[0]}=... "
                         "or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).")
    if jax.config.jax_platforms in (None, "", "cpu") and not _has_accelerator():
        # CPU collectives across processes (tests, laptops).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)


def slurm_local_device_ids(env) -> list[int] | None:
    """All of the node's GPUs for a SLURM job with one task per node, else None (JAX's
    own choice). The ids count the GPUs SLURM made visible (CUDA_VISIBLE_DEVICES)."""
    if "SLURM_JOB_ID" not in env or "SLURM_PROCID" not in env:
        return None
    per_node = env.get("SLURM_NTASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "")
    if per_node.split("(", 1)[0].split(",", 1)[0] != "1":
        return None
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    count = len(visible) or int(env.get("SLURM_GPUS_ON_NODE", "0") or 0)
    return list(range(count)) if count > 1 else None


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    return int(v) if v not in (None, "") else None


def _has_accelerator() -> bool:
    plat = os.environ.get("JAX_PLATFORMS", "")
    return any(p in plat for p in ("cuda", "gpu", "tpu", "rocm"))
