"""Two local CPU processes (jax.distributed, gloo) train like one process on the same global batch."""
import os
import subprocess
import sys

import portpicker

from lvt_jax import trainer
from lvt_jax.stages.vqvae import VQVAEStage
from tests.helpers import assert_trees_close, mesh_of, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(data_dir, workdir, extra=()):
    return [sys.executable, "-m", "lvt_jax.main", "--config=configs/demo.py:tiny",
            f"--config.data.data_dir={data_dir}", f"--workdir={workdir}", "--mode=train_vqvae",
            "--config.vqvae.train.num_steps=3", "--config.vqvae.train.checkpoint_every=3",
            *extra]


def _env(devices: int):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
    for k in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(k, None)
    return env


def test_two_processes_match_one(tiny_data_dir, tmp_path):
    port = portpicker.pick_unused_port()
    multi = tmp_path / "multi"
    procs = [subprocess.Popen(
        _cmd(tiny_data_dir, multi, [f"--coordinator_address=localhost:{port}",
                                    "--num_processes=2", f"--process_id={i}"]),
        cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
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
