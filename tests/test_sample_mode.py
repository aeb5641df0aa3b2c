"""--mode=sample: outputs of the tiny pipeline's sampling, user-provided priming, bad input."""
import json
import os
import shutil

import numpy as np
import pytest

from lvt_jax import media, run, sample_mode
from lvt_jax import sharding as shd
from lvt_jax.data import pipeline, video_decode
from lvt_jax.generate import Generator
from tests.helpers import CompileCounter


def _workdir_copy(src: str, dst) -> str:
    """A workdir sharing the pipeline's checkpoints (read-only), with its own outputs."""
    for stage in ("vqvae", "transformer"):
        os.symlink(os.path.join(src, stage), dst / stage)
    return str(dst)


@pytest.fixture(scope="module")
def generator(pipeline_run):
    """Both stages of the tiny pipeline, loaded as --mode=sample loads them."""
    cfg, workdir = pipeline_run
    return Generator.from_workdir(cfg, workdir, shd.make_mesh(cfg.mesh))


def test_mode_all_ends_with_samples(pipeline_run, generator):
    cfg, workdir = pipeline_run
    out = os.path.join(workdir, "samples")
    info = json.load(open(os.path.join(out, "samples.json")))
    n = info["num_videos"]
    assert n == 4  # the tiny test split has 4 videos (num_videos=8 asks for more)
    T, n_prime = cfg.transformer.model.clip_shape[0], info["n_prime"]
    data = np.load(os.path.join(out, "samples.npz"))
    videos, codes, real = data["videos"], data["codes"], data["real"]
    assert videos.shape == (n, T, 64, 64, 3) and videos.dtype == np.uint8
    assert codes.shape == (n, T, 16, 16, 4)
    test = pipeline.load_videos(cfg.data, "test")
    np.testing.assert_array_equal(real, np.stack([np.asarray(test[i])[:T] for i in range(n)]))
    # samples.npz is one consistent record: the videos are the stage-1 decoding of the
    # codes, and the priming codes are the stage-1 codes of the real priming frames
    np.testing.assert_array_equal(generator.decode(codes), videos)
    np.testing.assert_array_equal(codes[:, :n_prime], generator.encode(real[:, :n_prime]))
    assert info["prime_source"] == dict(kind="test split", dataset="synthetic_pushing",
                                        videos=[0, 4], frames_used=[0, n_prime])
    assert sorted(os.listdir(out)) == sorted(info["files"] + ["samples.json"])
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


def test_sample_primes_with_a_users_video_file_and_frame_folder(pipeline_run, generator,
                                                                  tmp_path):
    cfg, workdir = pipeline_run
    T = cfg.transformer.model.clip_shape[0]
    test = np.asarray(pipeline.load_videos(cfg.data, "test")[0])
    # a non-square 96x128 video of 6 frames: centre-cropped and resized back to 64x64
    big = np.zeros((6, 96, 128, 3), np.uint8)
    big[:, :, 16:112] = np.repeat(np.repeat(test[:6], 3, axis=1), 3, axis=2)[:, ::2, ::2]
    video = str(tmp_path / "mine.mp4")
    media.write_mp4(video, big, fps=10)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, f in enumerate(big[:2]):
        media.write_png(str(folder / f"{i:03d}.png"), f)
    wd = tmp_path / "w"
    wd.mkdir()
    # an earlier run's 4 samples: the next run must replace them, not sit beside them
    shutil.copytree(os.path.join(workdir, "samples"), wd / "samples")
    expect = {video: dict(kind="video", frames_read=T, fps=10.0, frames_in_file=6),
              str(folder): dict(kind="image folder", frames_read=2, first="000.png",
                                last="001.png")}
    for prime in (video, str(folder)):
        c = cfg.copy_and_resolve_references()
        c.sample.update(prime=prime, seed=3)
        info = run.sample(c, _workdir_copy(workdir, wd) if prime == video else str(wd))
        assert info["num_videos"] == 1 and info["prime"] == prime
        out = wd / "samples"
        assert sorted(os.listdir(out)) == ["grid.png", "sample_0000.gif", "sample_0000.mp4",
                                           "samples.json", "samples.npz"]
        assert json.load(open(out / "samples.json"))["prime_source"] == info["prime_source"]
        assert info["prime_source"] == dict(
            path=prime, frames_used=[0, 1], source_size=[128, 96],
            crop=dict(left=16, top=0, side=96), resized_to=64, **expect[prime])
        data = np.load(str(out / "samples.npz"))
        assert data["videos"].shape == (1, T, 64, 64, 3)
        # the priming frame is the user's, centre-cropped and resized ...
        frames, _ = media.read_prime(prime, 64, max_frames=T)
        assert np.abs(frames[0].astype(float) - test[0]).mean() < 6
        # ... and the sample starts from its stage-1 codes, decoded
        np.testing.assert_array_equal(data["codes"][:, :1], generator.encode(frames[None, :1]))
        np.testing.assert_array_equal(data["videos"], generator.decode(data["codes"]))
        assert ("real" in data) == (prime == video)  # 6 >= T frames: shown in the grid


def test_a_priming_video_is_decoded_only_as_far_as_needed(tmp_path, monkeypatch):
    frames = np.random.default_rng(0).integers(0, 256, (12, 48, 80, 3), dtype=np.uint8)
    path = str(tmp_path / "long.mp4")
    media.write_mp4(path, frames, fps=25)
    full, info_full = media.read_prime(path, 32)
    assert len(full) == 12 and info_full["frames_read"] == 12
    converted = []
    real_convert = video_decode.center_crop_resize
    monkeypatch.setattr(video_decode, "center_crop_resize",
                        lambda image, size: converted.append(1) or real_convert(image, size))
    head, info = media.read_prime(path, 32, max_frames=3)
    assert len(converted) == 3  # the decoder stopped after the frames asked for
    np.testing.assert_array_equal(head, full[:3])
    assert info == dict(info_full, frames_read=3)
    assert info["crop"] == dict(left=16, top=0, side=48) and info["fps"] == 25.0


def test_each_run_replaces_the_previous_samples_and_keeps_foreign_files(tmp_path):
    out = str(tmp_path / "samples")
    videos = np.zeros((3, 2, 8, 8, 3), np.uint8)
    codes = np.zeros((3, 2, 2, 2, 4), np.int32)
    sample_mode.write_outputs(out, videos, None, codes, dict(num_videos=3), fps=4)
    assert len([n for n in os.listdir(out) if n.startswith("sample_")]) == 6
    sample_mode.write_outputs(out, videos[:1], None, codes[:1], dict(num_videos=1), fps=4)
    assert sorted(os.listdir(out)) == ["grid.png", "sample_0000.gif", "sample_0000.mp4",
                                       "samples.json", "samples.npz"]
    assert sorted(os.listdir(tmp_path)) == ["samples"]  # no staging or old folder left
    # a file of the user's in the folder: the previous folder is kept whole, renamed
    (tmp_path / "samples" / "notes.txt").write_text("mine")
    sample_mode.write_outputs(out, videos[:2], None, codes[:2], dict(num_videos=2), fps=4)
    kept = [n for n in os.listdir(tmp_path) if n.startswith("samples.previous-")]
    assert len(kept) == 1
    assert (tmp_path / kept[0] / "notes.txt").read_text() == "mine"
    assert "sample_0000.mp4" in os.listdir(tmp_path / kept[0])
    assert json.load(open(os.path.join(out, "samples.json")))["num_videos"] == 2
    assert "notes.txt" not in os.listdir(out)
    # an interrupted run's leftovers: its staging folder goes, a user's file is kept
    shutil.rmtree(tmp_path / kept[0])
    for leftover, names in (("samples.tmp-11", ["grid.png"]),
                            ("samples.old-12", ["grid.png", "mine.txt"])):
        (tmp_path / leftover).mkdir()
        for n in names:
            (tmp_path / leftover / n).write_text("x")
    sample_mode.write_outputs(out, videos[:1], None, codes[:1], dict(num_videos=1), fps=4)
    left = sorted(os.listdir(tmp_path))
    assert left[0] == "samples" and len(left) == 2 and left[1].startswith("samples.previous-")
    assert sorted(os.listdir(tmp_path / left[1])) == ["grid.png", "mine.txt"]


def test_bad_sample_settings_fail_before_any_work(pipeline_run, tmp_path, monkeypatch):
    cfg, _ = pipeline_run
    image = str(tmp_path / "one.png")
    media.write_png(image, np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "notes.txt").write_text("not a video")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    cases = [(dict(prime=str(tmp_path / "nope.mp4")), FileNotFoundError, "does not exist"),
             (dict(prime=image, n_prime=2), ValueError,
              r"single image.*--config.sample.n_prime=1"),
             (dict(prime=str(tmp_path / "notes.txt")), ValueError,
              r"cannot be read as a video.*\.mp4.*\.png"),
             (dict(prime=str(tmp_path / "broken.png")), ValueError,
              "cannot be read as an image"),
             (dict(top_p=0.0), ValueError, "top_p"),
             (dict(temperature=-1.0), ValueError, "temperature"),
             (dict(batch_size=3), ValueError, "sample.batch_size=3 is not divisible"),
             (dict(n_prime=4), ValueError, "n_prime=4"),
             (dict(sampler="fast"), ValueError, "sampler")]

    def reached(*args, **kwargs):
        raise AssertionError("checkpoints loaded before the bad setting was refused")
    monkeypatch.setattr(Generator, "from_workdir", reached)
    for kw, err, match in cases:
        c = cfg.copy_and_resolve_references()
        c.sample.update(**kw)
        with CompileCounter() as compiled, pytest.raises(err, match=match):
            run.run(c, str(tmp_path), "sample")
        assert compiled.names == [], kw
    assert not (tmp_path / "samples").exists()
