"""HDR stage 1 on the shared trainer: sharded == single device, exact resume, eval.json."""
import json
import os

import jax
import numpy as np
import pytest

from configs import hdr_demo
from lvt_jax import sharding as shd
from lvt_jax import trainer
from lvt_jax.data import synthetic_pushing
from lvt_jax.stages.hdr_autoencoder import HDRAutoencoderStage
from tests.helpers import assert_trees_close, flat, mesh_of


def hdr_tiny(data_dir, **train):
    c = hdr_demo.get_config("tiny")
    c.data.data_dir = str(data_dir)
    c.hdr.autoencoder.train.update(**train)
    return c


def _one_step(cfg, mesh):
    stage = HDRAutoencoderStage(cfg)
    bound = trainer.ShardedStage(stage, mesh, shd.rules_from_config(cfg))
    state = bound.init()
    # Demo videos (objects on a table), not noise: what slot attention is made for.
    video = synthetic_pushing.generate_videos(0, "train", 0, 8)["video"][:, :3]
    batch = {"video": jax.device_put(video, shd.batch_sharding(mesh, 5, bound.rules))}
    state, metrics = bound.train_step(state, batch)
    return state, jax.device_get(metrics)


@pytest.fixture(scope="module")
def single_device_step(tmp_path_factory):
    return _one_step(hdr_tiny(tmp_path_factory.mktemp("hdr")), mesh_of(1))


@pytest.mark.parametrize("data,fsdp,tensor", [(8, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(tmp_path, single_device_step, data, fsdp, tensor):
    # The LVT test's tolerances. (2, 2, 2) caught an XLA SPMD bug (outputs off by O(1);
    # worked around in slot_attention.GRU): tests/test_xla_workarounds.py keeps it in view.
    ref_state, ref_m = single_device_step
    state, m = _one_step(hdr_tiny(tmp_path), mesh_of(8, data, fsdp, tensor))
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], ref_m["grad_norm"], rtol=1e-5)
    assert_trees_close(state.params, ref_state.params, atol=1e-5)
    # Adam's first moment after one step is 0.1 x the gradient: compared per tensor,
    # relative to the tensor's largest entry.
    ref_mu = flat(ref_state.opt_state[1][0].mu)
    for k, v in flat(state.opt_state[1][0].mu).items():
        np.testing.assert_allclose(v, ref_mu[k], atol=1e-4 * np.abs(ref_mu[k]).max() + 1e-12,
                                   err_msg=k)
    if fsdp > 1:  # parameters really are split across the fsdp axis
        k = state.params["encoder"]["conv2"]["kernel"]
        assert "fsdp" in str(k.sharding.spec)


def test_resume_equals_uninterrupted_and_eval_outputs(tiny_data_dir, tmp_path):
    mesh = mesh_of(2)
    straight, res = trainer.train(HDRAutoencoderStage(hdr_tiny(tiny_data_dir, num_steps=4,
                                                               checkpoint_every=4)),
                                  str(tmp_path / "a"), mesh)
    trainer.train(HDRAutoencoderStage(hdr_tiny(tiny_data_dir, num_steps=2, checkpoint_every=2)),
                  str(tmp_path / "b"), mesh)
    resumed, _ = trainer.train(HDRAutoencoderStage(hdr_tiny(tiny_data_dir, num_steps=4,
                                                            checkpoint_every=2)),
                               str(tmp_path / "b"), mesh)
    assert int(resumed.step) == 4
    assert_trees_close(straight.params, resumed.params, atol=0, rtol=0)
    assert_trees_close(straight.opt_state, resumed.opt_state, atol=0, rtol=0)
    stage_dir = tmp_path / "a" / "hdr_autoencoder"
    ev = json.load(open(stage_dir / "eval.json"))
    assert ev["step"] == 4 and ev["num_clips"] == 4 and ev["clip_length"] == 4
    assert 5.0 < ev["psnr"] < 60.0 and ev["kl_static_nats"] > 0 and ev["kl_dynamic_nats"] > 0
    assert -1.0 <= ev["fg_ari"] <= 1.0 and 0.0 <= ev["swap_score"] <= 1.0
    assert os.path.exists(stage_dir / "decomposition.png")


@pytest.mark.parametrize("field,value,match", [
    ("hdr.model.num_objects", 0, r"num_objects=0.*at least one object slot"),
    ("hdr.autoencoder.train.clip_length", 1, r"clip_length=1: a clip needs at least 2 frames"),
    ("hdr.autoencoder.train.eval_clip_length", 1, r"eval_clip_length=1"),
    ("hdr.autoencoder.train.mask_metrics", "on", None),   # fine: the demo data has masks
])
def test_bad_settings_fail_before_training(tmp_path, monkeypatch, field, value, match):
    from lvt_jax import run

    def reached(*a, **k):
        raise RuntimeError("training started")
    monkeypatch.setattr(trainer, "train", reached)
    cfg = hdr_tiny(tmp_path)
    node = cfg
    *path, last = field.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    if match is None:
        with pytest.raises(RuntimeError, match="training started"):
            run.run(cfg, str(tmp_path / "w"), "train_hdr_autoencoder")
    else:
        with pytest.raises(ValueError, match=match):
            run.run(cfg, str(tmp_path / "w"), "train_hdr_autoencoder")


def test_mask_metrics_on_a_dataset_without_masks_is_refused(tmp_path, monkeypatch):
    from lvt_jax import run
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("training started"))
    cfg = hdr_demo.get_config("tiny")
    cfg.data.name = "bair"
    cfg.hdr.autoencoder.train.mask_metrics = "on"
    with pytest.raises(ValueError, match=r"data.name='bair' has none.*mask_metrics=auto"):
        run.run(cfg, str(tmp_path), "train_hdr_autoencoder")


def test_unknown_variant_and_wrong_system(tmp_path):
    from lvt_jax import run
    with pytest.raises(ValueError, match=r"unknown variant.*known: tiny"):
        hdr_demo.get_config("huge")
    with pytest.raises(ValueError, match=r"--mode=train_vqvae trains a stage of LVT"):
        run.run(hdr_tiny(tmp_path), str(tmp_path), "train_vqvae")
