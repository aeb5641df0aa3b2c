"""Shared trainer: exact resume, non-finite guard, eval outputs, checkpoint retention."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lvt_jax import trainer
from lvt_jax.stages.vqvae import VQVAEStage
from tests.helpers import assert_trees_close, mesh_of, tiny_config


def test_resume_equals_uninterrupted(tiny_data_dir, tmp_path):
    mesh = mesh_of(2)
    straight, _ = trainer.train(VQVAEStage(tiny_config(tiny_data_dir, num_steps=4,
                                                       checkpoint_every=4)),
                                str(tmp_path / "a"), mesh)
    # Interrupted run: 2 steps, stop, then resume to 4 from the checkpoint at step 2.
    trainer.train(VQVAEStage(tiny_config(tiny_data_dir, num_steps=2, checkpoint_every=2)),
                  str(tmp_path / "b"), mesh)
    resumed, results = trainer.train(VQVAEStage(tiny_config(tiny_data_dir, num_steps=4,
                                                            checkpoint_every=2)),
                                     str(tmp_path / "b"), mesh)
    assert int(resumed.step) == 4 and results["step"] == 4
    assert_trees_close(straight.params, resumed.params, atol=0, rtol=0)
    assert_trees_close(straight.extra, resumed.extra, atol=0, rtol=0)
    assert_trees_close(straight.opt_state, resumed.opt_state, atol=0, rtol=0)
    # Training changed the parameters (the comparison above is not vacuous).
    init = trainer.ShardedStage(VQVAEStage(tiny_config(tiny_data_dir)), mesh,
                                trainer.shd.DEFAULT_RULES).init()
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), init.params, straight.params)
    assert max(jax.tree.leaves(diff)) > 1e-4


class _RecordingHook:
    """Records the periodic hook's calls (the in-loop FVD of stage 2 uses this hook)."""
    every = 2

    def __init__(self):
        self.calls = []

    def __call__(self, state, step):
        self.calls.append((step, int(state.step)))
        return {"hook": float(step)}


def test_eval_json_and_checkpoint_retention(tiny_data_dir, tmp_path):
    cfg = tiny_config(tiny_data_dir, num_steps=6, checkpoint_every=1, keep=2)
    hook = _RecordingHook()
    trainer.train(VQVAEStage(cfg), str(tmp_path), mesh_of(1), periodic=hook)
    # every 2 steps with the state of that step; the last step has the final eval instead
    assert hook.calls == [(2, 2), (4, 4)]
    ev = json.load(open(tmp_path / "vqvae" / "eval.json"))
    assert ev["step"] == 6 and ev["num_frames"] == 4 * 30
    assert 5.0 < ev["psnr"] < 60.0 and -1.0 <= ev["ssim"] <= 1.0
    assert len(ev["codebook_usage"]) == 4 and all(0 < u <= 1 for u in ev["codebook_usage"])
    steps = sorted(int(s) for s in os.listdir(tmp_path / "vqvae" / "checkpoints") if s.isdigit())
    assert steps == [5, 6]
    assert os.listdir(tmp_path / "vqvae" / "tb")


class _DivergingStage(VQVAEStage):
    """Loss turns NaN from step 4 on (as after a blow-up)."""

    def train_step(self, state, batch):
        new, metrics = super().train_step(state, batch)
        metrics["loss"] = jnp.where(new.step >= 4, jnp.nan, metrics["loss"])
        return new, metrics


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_data_dir, tmp_path):
    cfg = tiny_config(tiny_data_dir, num_steps=8, checkpoint_every=2, log_every=100)
    with pytest.raises(trainer.NonFiniteLossError, match=r"at step 4;.*step 2"):
        trainer.train(_DivergingStage(cfg), str(tmp_path), mesh_of(1))
    ckpts = sorted(int(s) for s in os.listdir(tmp_path / "vqvae" / "checkpoints") if s.isdigit())
    assert ckpts == [2]
    assert not (tmp_path / "vqvae" / "eval.json").exists()
