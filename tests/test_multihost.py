"""Two local CPU processes (jax.distributed, gloo) train like one process on the same global
batch; they are started by launch/local_multiprocess.sh, which is tested with them."""
import os
import signal
import subprocess
import sys

import portpicker

from lvt_jax import trainer
from lvt_jax.stages.vqvae import VQVAEStage
from tests.helpers import assert_trees_close, mesh_of, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flags(data_dir):
    return [f"--config.data.data_dir={data_dir}", "--mode=train_vqvae",
            "--config.vqvae.train.num_steps=3", "--config.vqvae.train.checkpoint_every=3"]


def _cmd(data_dir, workdir):
    return [sys.executable, "-m", "lvt_jax.main", "--config=configs/demo.py:tiny",
            f"--workdir={workdir}", *_flags(data_dir)]


def _env(devices: int):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


SCRIPT = os.path.join(ROOT, "launch", "local_multiprocess.sh")


def _launch(workdir, flags, python=sys.executable, timeout=600) -> tuple[int, str]:
    """launch/local_multiprocess.sh WORKDIR FLAGS...; its whole process group is killed if
    it outlives `timeout` (a hung collective must not hang the test suite)."""
    env = dict(_env(1), PORT=str(portpicker.pick_unused_port()), PYTHON=python)
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


def test_two_processes_match_one(tiny_data_dir, tmp_path):
    multi = tmp_path / "multi"
    code, out = _launch(multi, _flags(tiny_data_dir))
    assert code == 0, out[-3000:]
    # The reference: one process on one device with the same global batch. (Not two fake
    # devices in one process: XLA:CPU aborts an in-process all-reduce whose second device
    # thread is starved for 40 s, which happened on a loaded 2-core machine.)
    single = tmp_path / "single"
    out = subprocess.run(_cmd(tiny_data_dir, single), cwd=ROOT, env=_env(1),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]

    cfg = tiny_config(tiny_data_dir, num_steps=3)
    mesh = mesh_of(1)
    a, step_a = trainer.restore_state(VQVAEStage(cfg), mesh, str(multi))
    b, step_b = trainer.restore_state(VQVAEStage(cfg), mesh, str(single))
    assert step_a == step_b == 3
    assert_trees_close(a.params, b.params, atol=1e-5)
    assert_trees_close(a.extra, b.extra, atol=1e-5)
    assert (multi / "vqvae" / "eval.json").exists()
