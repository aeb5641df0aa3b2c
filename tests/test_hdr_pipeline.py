"""HDR end to end: --mode=all on the tiny demo, its sampler, outputs and bad workdirs."""
import json
import os

import jax
import numpy as np
import pytest

from lvt_jax import generate, run
from lvt_jax import sharding as shd
from lvt_jax.generate.hdr import HDRGenerator, freeze_moving_slot
from lvt_jax.models.hdr.autoencoder import POSITION_DIMS
from tests.helpers import mesh_of


def test_mode_all_writes_every_stage(hdr_pipeline_run):
    cfg, workdir = hdr_pipeline_run
    ae = json.load(open(os.path.join(workdir, "hdr_autoencoder", "eval.json")))
    assert ae["step"] == 4 and ae["num_clips"] == 4 and 0 <= ae["swap_score"] <= 1
    for split in ("train", "test"):
        meta = json.load(open(os.path.join(workdir, "hdr_latents", split, "metadata.json")))
        assert meta["format"] == "lvt_jax.hdr_latents/v1" and meta["dtype"] == "float32"
        assert meta["layout"]["dynamic"] == [3, 6] and meta["hdr_autoencoder_step"] == 4
    pred = json.load(open(os.path.join(workdir, "hdr_predictor", "eval.json")))
    assert pred["step"] == 4 and np.isfinite(pred["elbo_nats_per_frame"])
    assert pred["elbo_nats_per_frame"] == pytest.approx(
        pred["nll_nats_per_frame"] + pred["kl_nats_per_frame"])
    out = os.path.join(workdir, "samples")
    info = json.load(open(os.path.join(out, "samples.json")))
    assert info["system"] == "hdr" and info["num_videos"] == 4
    assert {"sample_0000.mp4", "grid.png", "layers.png", "frozen_0003.mp4",
            "samples.npz"} <= set(info["files"])
    npz = np.load(os.path.join(out, "samples.npz"))
    assert npz["videos"].shape == (4, 4, 64, 64, 3) and npz["dynamic"].shape == (4, 4, 3, 6)


@pytest.fixture(scope="module")
def generator(hdr_pipeline_run):
    cfg, workdir = hdr_pipeline_run
    return generate.from_workdir(cfg, workdir, mesh_of(8))


def _prime(cfg, n):
    from lvt_jax.data import pipeline
    videos = pipeline.load_videos(cfg.data, "test")
    return np.stack([videos[i % len(videos)][:1] for i in range(n)])


def test_samples_are_the_rendered_latents_and_cached_equals_naive(hdr_pipeline_run, generator):
    cfg, workdir = hdr_pipeline_run
    prime = _prime(cfg, 6)
    videos, arrays = generator.generate(prime, jax.random.key(3))
    frames, _, _ = generator.render(arrays["static"], arrays["background"], arrays["dynamic"])
    np.testing.assert_array_equal(frames, videos)
    naive = HDRGenerator(cfg, generator.ae_params, generator.params, mesh_of(8), sampler="naive")
    v2, a2 = naive.generate(prime, jax.random.key(3))
    np.testing.assert_allclose(a2["dynamic"], arrays["dynamic"], atol=1e-5)
    assert np.abs(v2.astype(int) - videos.astype(int)).max() <= 1
    # The priming frame's latents are stage 1's, later frames are predicted (they move).
    assert np.abs(arrays["dynamic"][:, 1:] - arrays["dynamic"][:, :1]).max() > 0


def test_a_video_does_not_depend_on_its_batch_or_devices(hdr_pipeline_run, generator):
    cfg, workdir = hdr_pipeline_run
    prime = _prime(cfg, 5)
    _, a8 = generator.generate(prime, jax.random.key(7), first_index=10)
    cfg1 = cfg.copy_and_resolve_references()
    cfg1.sample.batch_size = 2
    one = HDRGenerator(cfg1, shd.fetch(generator.ae_params), shd.fetch(generator.params),
                       mesh_of(1))
    _, a1 = one.generate(prime[2:4], jax.random.key(7), first_index=12)
    np.testing.assert_allclose(a1["dynamic"], a8["dynamic"][2:4], atol=1e-5)


def test_freezing_stops_one_object(generator, hdr_pipeline_run):
    cfg, _ = hdr_pipeline_run
    _, arrays = generator.generate(_prime(cfg, 2), jax.random.key(1))
    dyn = arrays["dynamic"]
    frozen, slot = freeze_moving_slot(dyn, 1)
    frozen = np.asarray(frozen)
    for b, k in enumerate(np.asarray(slot)):
        assert k >= 1
        np.testing.assert_array_equal(frozen[b, 1:, k], np.broadcast_to(dyn[b, :1, k], frozen[b, 1:, k].shape))
        others = [s for s in range(dyn.shape[2]) if s != k]
        np.testing.assert_array_equal(frozen[b][:, others], dyn[b][:, others])
        pos = dyn[b, :, 1:, :POSITION_DIMS]
        travel = np.abs(np.diff(pos, axis=0)).sum()
        assert travel >= 0


def test_sampling_the_wrong_or_an_empty_workdir_says_what_to_run(hdr_pipeline_run, pipeline_run,
                                                                  tmp_path):
    cfg, hdr_workdir = hdr_pipeline_run
    lvt_cfg, lvt_workdir = pipeline_run
    with pytest.raises(FileNotFoundError, match=r"hdr_autoencoder.*--mode=train_hdr_autoencoder.*"
                                                r"holds LVT stages"):
        run.run(cfg, lvt_workdir, "sample")
    with pytest.raises(FileNotFoundError, match=r"'vqvae'.*--mode=train_vqvae.*holds HDR stages"):
        run.run(lvt_cfg, hdr_workdir, "sample")
    with pytest.raises(FileNotFoundError, match=r"--mode=sample needs a trained 'hdr_autoencoder'"):
        run.run(cfg, str(tmp_path), "sample")


def test_stage2_without_latents_names_the_encode_step(hdr_pipeline_run, tmp_path):
    cfg, _ = hdr_pipeline_run
    with pytest.raises(FileNotFoundError, match=r"hdr_latents/train does not exist; run "
                                                r"--mode=encode"):
        run.run(cfg, str(tmp_path), "train_hdr_predictor")
