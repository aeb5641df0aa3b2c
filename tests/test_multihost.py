"""Several local CPU processes (jax.distributed, gloo) run like one process on the same
global batch; they are started by launch/local_multiprocess.sh, which is tested with them.

Every subprocess gets long XLA:CPU collective timeouts: on a loaded 2-core machine one
device thread of an in-process all-reduce can be starved for longer than the default
40 s, and XLA then aborts the process (seen with two fake devices in one process)."""
import os
import signal
import subprocess
import sys

import portpicker

from lvt_jax import trainer
from lvt_jax.stages.vqvae import VQVAEStage
from tests.helpers import assert_trees_close, mesh_of, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "launch", "local_multiprocess.sh")
PATIENT_COLLECTIVES = ("--xla_cpu_collective_call_terminate_timeout_seconds=900 "
                       "--xla_cpu_collective_timeout_seconds=900")
# Every parameter sharded over all 8 devices (where its size allows): each of the 4
# processes holds, and checkpoints, its own part of the state.
MESH = ["--config.mesh.data=1", "--config.mesh.fsdp=8"]


def _flags(data_dir, steps: int):
    return [f"--config.data.data_dir={data_dir}", "--mode=train_vqvae", *MESH,
            f"--config.vqvae.train.num_steps={steps}", "--config.vqvae.train.checkpoint_every=2"]


def _env(devices: int):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {PATIENT_COLLECTIVES}")
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def _launch(workdir, flags, nproc=2, devices=1, python=sys.executable, timeout=600,
            **env_vars) -> tuple[int, str]:
    """launch/local_multiprocess.sh WORKDIR FLAGS...; its whole process group is killed if
    it outlives `timeout` (a hung collective must not hang the test suite)."""
    env = dict(_env(1), PORT=str(portpicker.pick_unused_port()), PYTHON=python,
               NPROC=str(nproc), DEVICES=str(devices), XLA_EXTRA_FLAGS=PATIENT_COLLECTIVES,
               **env_vars)
    proc = subprocess.Popen(["bash", SCRIPT, str(workdir), *flags], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        return proc.wait(timeout=timeout), proc.stdout.read()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"launch/local_multiprocess.sh still running after {timeout} s")
    finally:
        proc.stdout.close()


def test_launcher_fails_when_a_process_fails_and_stops_the_other(tmp_path):
    """A stand-in python: process 1 fails at once, process 0 would wait for it forever."""
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\ncase "$*" in *--process_id=1*) exit 3;; '
                    '*) exec sleep 120;; esac\n')
    stub.chmod(0o755)
    code, out = _launch(tmp_path / "w", ["--mode=summary"], python=str(stub), timeout=60)
    assert code != 0, out


def test_four_processes_of_two_devices_train_save_and_resume_like_one_of_eight(
        tiny_data_dir, tmp_path):
    """4 processes x 2 devices: 2 steps and a checkpoint, then a second launch resumes
    from it (every process restores its part) and trains step 3; equal to one process
    with 8 devices training 3 steps straight."""
    multi = tmp_path / "multi"
    # the second launch reuses the first one's compiled programs (same shapes, same mesh)
    cache = dict(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    code, out = _launch(multi, _flags(tiny_data_dir, 2), nproc=4, devices=2, **cache)
    assert code == 0, out[-3000:]
    state_dir = multi / "vqvae" / "checkpoints" / "2" / "state"
    writers = sorted(p.name for p in state_dir.iterdir() if p.name.startswith("ocdbt.process_"))
    assert writers == [f"ocdbt.process_{i}" for i in range(4)], writers  # own shards each
    code, out = _launch(multi, _flags(tiny_data_dir, 3), nproc=4, devices=2, **cache)
    assert code == 0, out[-3000:]
    assert "vqvae: resumed from step 2" in out, out[-3000:]

    single = tmp_path / "single"
    ref = subprocess.run([sys.executable, "-m", "lvt_jax.main", "--config=configs/demo.py:tiny",
                          f"--workdir={single}", *_flags(tiny_data_dir, 3)],
                         cwd=ROOT, env=_env(8), capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    cfg = tiny_config(tiny_data_dir, num_steps=3)
    mesh = mesh_of(1)
    a, step_a = trainer.restore_state(VQVAEStage(cfg), mesh, str(multi))
    b, step_b = trainer.restore_state(VQVAEStage(cfg), mesh, str(single))
    assert step_a == step_b == 3
    assert_trees_close(a.params, b.params, atol=1e-5)
    assert_trees_close(a.extra, b.extra, atol=1e-5)
    assert_trees_close(a.opt_state, b.opt_state, atol=1e-5)
    assert (multi / "vqvae" / "eval.json").exists()


def test_a_workdir_each_host_sees_differently_is_refused(tiny_data_dir, tmp_path):
    """Two 'hosts' (working directories) given the same relative --workdir: each sees its
    own folder, as hosts with local disks would. Both processes stop before training,
    naming the problem; process 0's marker is removed again."""
    port = portpicker.pick_unused_port()
    hosts = [tmp_path / "host0", tmp_path / "host1"]
    procs = []
    for i, host in enumerate(hosts):
        host.mkdir()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "lvt_jax.main",
             f"--config={os.path.join(ROOT, 'configs', 'demo.py')}:tiny", "--workdir=wd",
             *_flags(tiny_data_dir, 2), f"--coordinator_address=localhost:{port}",
             "--num_processes=2", f"--process_id={i}"],
            cwd=host, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    for p, out in zip(procs, outs):
        assert p.returncode != 0, out[-2000:]
        assert "is not shared between the hosts" in out and "process(es) [1]" in out, out[-3000:]
    assert not (hosts[0] / "wd").exists()  # made for the marker, removed with it
    assert not (hosts[1] / "wd" / "vqvae").exists()
