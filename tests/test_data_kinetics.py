"""Kinetics-600 from local clips: the tfds builder, bad-clip handling, restarts, layouts,
and the pipeline over videos of varying length.

The clips are written here with PyAV (libx264, lossless): 48x32 frames whose 8-pixel
side borders are black and whose central 32x32 square is a flat grey that encodes the
clip and the frame (level = base + 6 * t). A correct centre crop + resize therefore gives
frames that are that grey everywhere, and the level identifies which frame it is.
"""

from __future__ import annotations

import csv
import os

import ml_collections
import numpy as np
import pytest

from lvt_jax.data import kinetics, kinetics_source, pipeline, video_decode

SIZE = 16  # stored frame size (the paper: 64)
W, H, BORDER = 48, 32, 8


def level(base: int, t: int) -> int:
    return base + 6 * t


def write_clip(path, num_frames: int, base: int, fps: int = 10, faststart: bool = False):
    """A lossless H.264 clip: black side borders, centre grey level(base, t) in frame t."""
    import av

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        s.options = {"preset": "ultrafast", "qp": "0"}
        for t in range(num_frames):
            img = np.zeros((H, W, 3), np.uint8)
            img[:, BORDER:W - BORDER] = level(base, t)
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def write_truncated(path, num_frames: int = 30):
    """A clip whose index (moov, written first) promises more frames than the data holds."""
    write_clip(path, num_frames, base=60, faststart=True)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 6 // 10])


def write_corrupt(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(2000))


def assert_frames(video: np.ndarray, base: int, num_frames: int) -> None:
    """Every pixel of frame t is grey level(base, t): the crop kept only the centre."""
    assert video.shape == (num_frames, SIZE, SIZE, 3) and video.dtype == np.uint8
    want = np.array([level(base, t) for t in range(num_frames)], np.int32)
    err = np.abs(video.astype(np.int32) - want[:, None, None, None])
    assert err.max() <= 3, f"max error {err.max()} (border pixels in the crop?)"


# (class, stem, frames, base); these are the usable clips of the standard layout.
TRAIN = [("abseiling", "aaa_000001_000011", 16, 20), ("abseiling", "bbb_000002_000012", 18, 30),
         ("zumba", "ccc_000003_000013", 20, 40)]
VALIDATION = [("zumba", "vvv_000000_000010", 17, 50)]
TEST = [("abseiling", "ttt_000000_000010", 16, 70)]


def make_standard_source(root) -> None:
    for split, clips in (("train", TRAIN), ("validate", VALIDATION), ("test", TEST)):
        for cls, stem, n, base in clips:
            write_clip(root / split / cls / f"{stem}.mp4", n, base)
    write_corrupt(root / "train" / "zumba" / "corrupt_000000_000010.mp4")
    write_clip(root / "train" / "zumba" / "short_000000_000010.mp4", 10, base=90)
    write_truncated(root / "test" / "abseiling" / "trunc_000000_000010.mp4")


def make_cfg(source_dir, data_dir, **kinetics_overrides) -> ml_collections.ConfigDict:
    kin = dict(source_dir=str(source_dir), fps=None, min_frames=16, test_split="test",
               num_workers=1, clips_per_shard=2)
    kin.update(kinetics_overrides)
    return ml_collections.ConfigDict(dict(
        name="kinetics600", data_dir=str(data_dir), image_size=SIZE, clip_length=16,
        worker_count=0, prefetch=2, kinetics=kin))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The standard-layout source prepared once, on 2 worker processes."""
    root = tmp_path_factory.mktemp("kinetics")
    make_standard_source(root / "src")
    cfg = make_cfg(root / "src", root / "tfds", num_workers=2)
    videos = pipeline.load_videos(cfg, "train")  # prepares the dataset
    return cfg, videos, pipeline._make_builder(cfg)


def test_build_keeps_good_clips_and_reports_every_skipped_one(built):
    import tensorflow_datasets as tfds

    cfg, videos, builder = built
    assert builder.info.features["label"].names == ["abseiling", "zumba"]
    ds = tfds.data_source(f"kinetics600/{builder.builder_config.name}",
                          data_dir=cfg.data_dir, split="train")
    assert len(ds) == len(TRAIN) == len(videos)
    for i, (cls, stem, n, base) in enumerate(TRAIN):
        ex = ds[i]
        assert ex["clip_id"].decode() == f"train/{cls}/{stem}"
        assert ex["label"] == ["abseiling", "zumba"].index(cls)
        assert ex["fps"] == pytest.approx(10.0)
        assert_frames(ex["video"], base, n)  # every frame, at the native rate
        np.testing.assert_array_equal(videos[i], ex["video"])
    np.testing.assert_array_equal(videos.frame_counts, [n for *_, n, _ in TRAIN])
    np.testing.assert_array_equal(videos.labels, [0, 0, 1])
    assert set(builder.info.splits.keys()) == {"train", "validation", "test"}

    summary = builder.build_summary()
    assert summary["splits"]["train"] == {"clips": 5, "written": 3,
                                          "skipped": {"decode_error": 1, "too_short": 1}}
    assert summary["splits"]["test"] == {"clips": 2, "written": 1, "skipped": {"truncated": 1}}
    assert summary["skipped"] == {"decode_error": 1, "too_short": 1, "truncated": 1}
    with open(os.path.join(builder.data_dir, kinetics.SKIPPED_FILE)) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert {(r["clip_id"], r["reason"]) for r in rows} == {
        ("train/zumba/corrupt_000000_000010", "decode_error"),
        ("train/zumba/short_000000_000010", "too_short"),
        ("test/abseiling/trunc_000000_000010", "truncated")}
    assert all(r["path"].endswith(".mp4") and r["detail"] for r in rows)
    assert not os.path.exists(builder.work_dir)  # finished: the parts were moved in


def test_test_split_alias_and_validation_split(built):
    cfg, _, _ = built
    test = pipeline.load_videos(cfg, "test")
    assert len(test) == 1
    assert_frames(test[0], TEST[0][3], TEST[0][2])
    val_cfg = make_cfg(cfg.kinetics.source_dir, cfg.data_dir, test_split="validation")
    val = pipeline.load_videos(val_cfg, "test")
    assert len(val) == 1 and val.labels.tolist() == [1]
    assert_frames(val[0], VALIDATION[0][3], VALIDATION[0][2])


def test_missing_source_fails_fast_naming_the_paths(tmp_path, monkeypatch):
    def reached(*args, **kwargs):
        raise AssertionError("preparation started before the missing clips were reported")
    # fast: the source is checked before tfds prepares or any clip is decoded
    monkeypatch.setattr(kinetics.Kinetics600, "download_and_prepare", reached)
    monkeypatch.setattr(video_decode, "decode_clip", reached)
    for source in (tmp_path / "nowhere", None):
        cfg = make_cfg(source, tmp_path / "tfds")
        if source is None:
            cfg.kinetics.source_dir = None
        with pytest.raises(kinetics_source.KineticsSourceNotFoundError) as err:
            pipeline.load_videos(cfg, "train")
        msg = str(err.value)
        assert "data.kinetics.source_dir" in msg and "<class name>" in msg
        if source is not None:
            assert str(source) in msg and os.path.join(str(source), "train") in msg
    (tmp_path / "empty").mkdir()
    with pytest.raises(kinetics_source.KineticsSourceNotFoundError, match="annotation CSVs"):
        pipeline.load_videos(make_cfg(tmp_path / "empty", tmp_path / "tfds"), "train")
    assert not (tmp_path / "tfds" / "kinetics600").exists()


def test_restart_redoes_only_the_missing_parts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    clips = [("abseiling", f"c{i}_000000_000010", 16, 20 + 10 * i) for i in range(5)]
    for cls, stem, n, base in clips:
        write_clip(src / "train" / cls / f"{stem}.mp4", n, base)
    cfg = make_cfg(src, tmp_path / "tfds", clips_per_shard=2)  # parts: 2 + 2 + 1 clips
    decoded: list[str] = []
    real_decode = video_decode.decode_clip

    def crash_on_c3(path, *args, **kwargs):
        if "c3_" in os.fspath(path):
            raise KeyboardInterrupt("simulated interruption")
        decoded.append(os.path.basename(path))
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(video_decode, "decode_clip", crash_on_c3)
    with pytest.raises(KeyboardInterrupt):
        pipeline.load_videos(cfg, "train")
    builder = pipeline._make_builder(cfg)
    part0 = os.path.join(builder.work_dir, "train-part-00000.array_record")
    assert os.path.exists(part0) and not builder.is_prepared()
    stat0 = os.stat(part0)
    assert not os.path.exists(os.path.join(builder.work_dir, "train-part-00001.json"))

    # A restart against a changed clip list is refused instead of mixing the two.
    write_clip(src / "train" / "abseiling" / "new_000000_000010.mp4", 16, 99)
    with pytest.raises(ValueError, match="different clip list"):
        pipeline.load_videos(cfg, "train")
    os.remove(src / "train" / "abseiling" / "new_000000_000010.mp4")

    def counting(path, *args, **kwargs):
        decoded.append(os.path.basename(path))
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(video_decode, "decode_clip", counting)
    decoded.clear()
    videos = pipeline.load_videos(cfg, "train")
    assert decoded == [f"c{i}_000000_000010.mp4" for i in (2, 3, 4)]  # part 0 not redone
    assert len(videos) == 5
    for i, (_, _, n, base) in enumerate(clips):
        assert_frames(videos[i], base, n)
    shard0 = pipeline._make_builder(cfg)._get_filename_template("train").sharded_filepath(
        shard_index=0, num_shards=3)
    assert os.stat(shard0).st_ino == stat0.st_ino  # the finished part became shard 0 as is


def test_flat_layout_with_the_official_csv_annotations(tmp_path):
    src = tmp_path / "src"
    write_clip(src / "videos" / "yt1_000010_000020.mp4", 16, 20)
    write_clip(src / "videos" / "yt2_000000_000010.mp4", 17, 40)
    write_clip(src / "videos" / "yt3_000005_000015.mp4", 16, 60)
    (src / "annotations").mkdir()
    with open(src / "annotations" / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        w.writerow(["zumba", "yt1", "10", "20", "train"])
        w.writerow(["air drumming", "yt2", "0", "10", "train"])
        w.writerow(["zumba", "gone", "0", "10", "train"])  # never downloaded
    with open(src / "annotations" / "test.csv", "w", newline="") as f:  # no labels
        w = csv.writer(f)
        w.writerow(["youtube_id", "time_start", "time_end", "split"])
        w.writerow(["yt3", "5", "15", "test"])
    cfg = make_cfg(src, tmp_path / "tfds")
    train = pipeline.load_videos(cfg, "train")
    builder = pipeline._make_builder(cfg)
    assert builder.info.features["label"].names == ["air drumming", "zumba"]
    src_info = kinetics_source.locate_source(src)
    assert src_info.layout == "flat"
    assert [c.clip_id for c in src_info.clips["train"]] == [
        "train/gone_000000_000010", "train/yt1_000010_000020", "train/yt2_000000_000010"]
    assert train.labels.tolist() == [1, 0]
    assert_frames(train[0], 20, 16)
    assert_frames(train[1], 40, 17)
    test = pipeline.load_videos(cfg, "test")
    assert test.labels.tolist() == [-1]  # unlabelled test clips are kept, label -1
    assert builder.build_summary()["splits"]["train"]["skipped"] == {"missing": 1}


def test_stage1_frames_one_random_frame_per_video_and_first_frames_in_eval(built):
    cfg, videos, _ = built
    it = pipeline.make_iterator(cfg, "train", "frames", 3, None, seed=4, train=True,
                                frames_per_video=1)
    assert it.steps_per_epoch == 1  # 3 videos, one frame each per epoch
    picked = set()
    for step in range(4):
        batch = next(it)
        for row in range(3):
            g = step * 3 + row
            video = videos[pipeline.shuffled_item(4, g, len(videos))]
            t = int(pipeline.sample_rng(4, g).integers(0, len(video)))
            np.testing.assert_array_equal(batch["image"][row], video[t])
            picked.add(t)
    assert len(picked) > 3  # frames from anywhere in the (varying-length) videos
    ev = list(pipeline.make_iterator(cfg, "train", "frames", 8, None, seed=0, train=False,
                                     eval_frames_per_video=4))
    images = np.concatenate([b["image"] for b in ev])[: 3 * 4]
    np.testing.assert_array_equal(images, np.concatenate([videos[v][:4] for v in range(3)]))
    with pytest.raises(ValueError, match="shortest"):
        pipeline.make_iterator(cfg, "train", "frames", 8, None, seed=0, train=False,
                               eval_frames_per_video=17)


def test_every_frame_of_varying_length_videos_exactly_once(built):
    cfg, videos, _ = built
    it = pipeline.make_iterator(cfg, "train", "frames", 16, None, seed=0, train=False)
    batches = list(it)
    total = sum(n for *_, n, _ in TRAIN)
    mask = np.concatenate([b["mask"] for b in batches])
    images = np.concatenate([b["image"] for b in batches])[mask > 0]
    assert len(images) == total == 54
    np.testing.assert_array_equal(images, np.concatenate([videos[v] for v in range(3)]))


def test_train_clips_are_windows_inside_each_video(built):
    cfg, videos, _ = built
    it = pipeline.make_iterator(cfg, "train", "clips", 3, None, seed=2, train=True)
    for step in range(3):
        batch = next(it)
        for row in range(3):
            g = step * 3 + row
            video = videos[pipeline.shuffled_item(2, g, len(videos))]
            start = int(pipeline.sample_rng(2, g).integers(0, len(video) - 16 + 1))
            np.testing.assert_array_equal(batch["video"][row], video[start:start + 16])


def test_decode_at_a_target_frame_rate(tmp_path):
    path = tmp_path / "c.mp4"
    write_clip(path, 20, base=20, fps=10)
    video, rate = video_decode.decode_clip(path, SIZE, target_fps=5, min_frames=1)
    assert rate == 5.0 and len(video) == 10  # 0.0 .. 1.9 s at 5 fps
    want = np.array([level(20, 2 * k) for k in range(10)])
    np.testing.assert_allclose(video.reshape(10, -1).mean(1), want, atol=3)
    with pytest.raises(video_decode.ClipError) as err:
        video_decode.decode_clip(path, SIZE, target_fps=5, min_frames=16)
    assert err.value.reason == "too_short"
