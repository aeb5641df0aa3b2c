"""--mode=sample: outputs of the tiny pipeline's sampling, user-provided priming, bad input."""
import json
import os
import time

import numpy as np
import pytest

from lvt_jax import media, run
from lvt_jax.data import pipeline


def _workdir_copy(src: str, dst) -> str:
    """A workdir sharing the pipeline's checkpoints (read-only), with its own outputs."""
    for stage in ("vqvae", "transformer"):
        os.symlink(os.path.join(src, stage), dst / stage)
    return str(dst)


def test_mode_all_ends_with_samples(pipeline_run):
    cfg, workdir = pipeline_run
    out = os.path.join(workdir, "samples")
    info = json.load(open(os.path.join(out, "samples.json")))
    n = info["num_videos"]
    assert n == 4  # the tiny test split has 4 videos (num_videos=8 asks for more)
    T = cfg.transformer.model.clip_shape[0]
    data = np.load(os.path.join(out, "samples.npz"))
    videos, codes, real = data["videos"], data["codes"], data["real"]
    assert videos.shape == (n, T, 64, 64, 3) and videos.dtype == np.uint8
    assert codes.shape == (n, T, 16, 16, 4)
    test = pipeline.load_videos(cfg.data, "test")
    np.testing.assert_array_equal(real, np.stack([np.asarray(test[i])[:T] for i in range(n)]))
    for i in range(n):
        mp4 = media.read_video(os.path.join(out, f"sample_{i:04d}.mp4"))
        gif = media.read_video(os.path.join(out, f"sample_{i:04d}.gif"))
        assert mp4.shape == gif.shape == (T, 64, 64, 3)
        # gif: palette-exact for these frames; mp4 (H.264, 4:2:0 chroma) is lossy, and
        # the tiny model's frames are noise-like: same frames by luma correlation
        assert np.abs(gif.astype(float) - videos[i]).mean() < 1
        luma = lambda x: x.astype(float).mean(-1).ravel()
        assert np.corrcoef(luma(mp4), luma(videos[i]))[0, 1] > 0.8
    grid = media.read_video(os.path.join(out, "grid.png"))[0]
    assert grid.shape == (2 * n * 66 + 2, T * 66 + 2, 3)  # real row + generated row per video
    assert not np.array_equal(videos[0, 1:], videos[1, 1:])


def test_sample_primes_with_a_users_video_file_and_frame_folder(pipeline_run, tmp_path):
    cfg, workdir = pipeline_run
    test = np.asarray(pipeline.load_videos(cfg.data, "test")[0])
    # a non-square 96x128 video: centre-cropped and resized back to 64x64
    big = np.zeros((6, 96, 128, 3), np.uint8)
    big[:, :, 16:112] = np.repeat(np.repeat(test[:6], 3, axis=1), 3, axis=2)[:, ::2, ::2]
    video = str(tmp_path / "mine.mp4")
    media.write_mp4(video, big, fps=10)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(big[:2]):
        media.write_png(str(folder / f"{i:03d}.png"), f)
    for prime in (video, str(folder)):
        wd = tmp_path / ("w_" + os.path.basename(prime).replace(".", "_"))
        wd.mkdir()
        c = cfg.copy_and_resolve_references()
        c.sample.update(prime=prime, seed=3)
        info = run.sample(c, _workdir_copy(workdir, wd))
        assert info["num_videos"] == 1 and info["prime"] == prime
        data = np.load(str(wd / "samples" / "samples.npz"))
        assert data["videos"].shape == (1, cfg.transformer.model.clip_shape[0], 64, 64, 3)
        # the priming frame is the user's (after resize): its reconstruction resembles it
        assert np.abs(data["videos"][0, 0].astype(float) - test[0]).mean() < 40


def test_bad_sample_settings_fail_before_any_work(pipeline_run, tmp_path):
    cfg, _ = pipeline_run
    cases = [(dict(prime=str(tmp_path / "nope.mp4")), FileNotFoundError, "does not exist"),
             (dict(top_p=0.0), ValueError, "top_p"),
             (dict(temperature=-1.0), ValueError, "temperature"),
             (dict(batch_size=3), ValueError, "sample.batch_size=3 is not divisible"),
             (dict(n_prime=4), ValueError, "n_prime=4"),
             (dict(sampler="fast"), ValueError, "sampler")]
    for kw, err, match in cases:
        c = cfg.copy_and_resolve_references()
        c.sample.update(**kw)
        t = time.perf_counter()
        with pytest.raises(err, match=match):
            run.run(c, str(tmp_path), "sample")
        assert time.perf_counter() - t < 5
