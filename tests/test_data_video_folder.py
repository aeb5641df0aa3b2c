"""A folder of your own videos (`video_folder`): listing, splits, labels, the shared
preparation (bad files skipped and listed, restarts), the errors that leave no dataset,
and the whole pipeline on a folder with nothing but its path.

Clips are written with PyAV as in test_data_kinetics: 48x32 frames with black side
borders around a flat grey square whose level encodes the clip and the frame, so a
correct centre crop gives frames that are that grey everywhere.
"""
from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from lvt_jax import validate
from lvt_jax.data import pipeline, video_decode, video_folder
from tests.helpers import mesh_of
from tests.test_data_kinetics import SIZE, assert_frames, write_clip, write_corrupt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (relative path, frames, grey base): arbitrary names, containers and nested folders.
GOOD = [("My Holiday 2019.MP4", 6, 20), ("trip/day 1/clip-a.mov", 7, 30),
        ("trip/day 1/clip b.mkv", 8, 40), ("a/b/c/deep.avi", 9, 50), ("x.mp4", 5, 60),
        ("zz top/é.m4v", 6, 70), ("trip/y.webm.mp4", 7, 80), ("z.mp4", 8, 90),
        ("k/l.mp4", 6, 100), ("k/m.mkv", 5, 110)]
LONG = ("long/take.mp4", 40, 10)  # stored as 3 pieces of <= 16 frames (tiny max_frames)
LONG_STARTS, LONG_LENGTHS = (0, 13, 27), [13, 14, 13]  # near-equal: 40 / 3
BAD = {"broken.mp4": "decode_error", "short.mp4": "too_short", "photo.jpg": "image",
       "notes.txt": "not_video"}


def make_folder(src) -> None:
    from PIL import Image
    for rel, n, base in GOOD + [LONG]:
        write_clip(src / rel, n, base)
    write_corrupt(src / "broken.mp4")
    write_clip(src / "short.mp4", 2, base=50)
    Image.fromarray(np.full((8, 8, 3), 99, np.uint8)).save(src / "photo.jpg")
    (src / "notes.txt").write_text("not a video")
    (src / ".DS_Store").write_bytes(b"\0")  # hidden: ignored, never listed


def make_cfg(src, data_dir, **overrides) -> ml_collections.ConfigDict:
    vf = dict(source_dir=str(src), test_fraction=0.25, labels=False, fps=None, min_frames=4,
              max_frames=16, num_workers=1, clips_per_shard=4)
    vf.update(overrides)
    return ml_collections.ConfigDict(dict(
        name="video_folder", data_dir=str(data_dir), image_size=SIZE, clip_length=4,
        worker_count=0, prefetch=2, video_folder=vf))


def expected_splits(paths: list[str], videos: list[str], fraction: float) -> dict[str, str]:
    """The documented rule, computed here: the round(f * N) videos with the smallest
    sha256(path) are test; other files fall on the side of that cut their hash lies on."""
    h = {p: hashlib.sha256(p.encode()).hexdigest() for p in paths}
    ranked = sorted(videos, key=h.get)
    cut = h[ranked[round(fraction * len(ranked)) - 1]]
    return {p: "test" if h[p] <= cut else "train" for p in paths}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_folder")
    make_folder(root / "src")
    cfg = make_cfg(root / "src", root / "tfds", num_workers=2)
    train = pipeline.load_videos(cfg, "train")  # prepares the dataset (2 processes)
    return cfg, train, pipeline.load_videos(cfg, "test"), pipeline._make_builder(cfg)


def test_splits_counts_and_the_skipped_list(built):
    cfg, train, test, builder = built
    files = [rel for rel, _, _ in GOOD + [LONG]] + list(BAD)
    videos = [rel for rel, _, _ in GOOD + [LONG]] + ["broken.mp4", "short.mp4"]
    split_of = expected_splits(files, videos, 0.25)
    assert sum(split_of[v] == "test" for v in videos) == round(0.25 * 13) == 3
    summary = builder.build_summary()
    assert summary["layout"] == "by_path" and summary["num_files"] == len(files)
    for split, videos_source in (("train", train), ("test", test)):
        mine = [f for f in files if split_of[f] == split]
        good = sorted((g for g in GOOD + [LONG] if split_of[g[0]] == split), key=lambda g: g[0])
        pieces = sum(3 if g == LONG else 1 for g in good)
        want_skipped = {}
        for f in mine:
            if f in BAD:
                want_skipped[BAD[f]] = want_skipped.get(BAD[f], 0) + 1
        got = summary["splits"][split]
        assert got["clips"] == len(mine) and got["written"] == pieces
        assert got["skipped"] == dict(sorted(want_skipped.items()))
        assert len(videos_source) == pieces
        # Records in clip-id order; each one every frame, centre-cropped; the long video
        # as near-equal pieces that together are the whole video.
        ds = builder.as_data_source(split)
        ids = [ds[i]["clip_id"].decode() for i in range(len(ds))]
        want_ids = []
        for rel, n, base in good:
            want_ids += [f"{rel}@{s}" for s in LONG_STARTS] if (rel, n, base) == LONG else [rel]
        assert ids == want_ids
        i = 0
        for rel, n, base in good:
            if (rel, n, base) == LONG:
                whole = np.concatenate([videos_source[i + k] for k in range(3)])
                assert [len(videos_source[i + k]) for k in range(3)] == LONG_LENGTHS
                assert_frames(whole, base, n)
                i += 3
            else:
                assert_frames(videos_source[i], base, n)
                i += 1
    assert (videos_source.labels == -1).all()  # unlabelled
    with open(os.path.join(builder.data_dir, "skipped_clips.tsv")) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert {(r["clip_id"], r["reason"], r["split"]) for r in rows} == {
        (f, reason, split_of[f]) for f, reason in BAD.items()}
    assert all(r["detail"] for r in rows)
    assert not os.path.exists(builder.work_dir)


def test_split_folders_and_labels_from_the_first_folder_level(tmp_path):
    src = tmp_path / "src"
    write_clip(src / "train" / "cats" / "a.mp4", 5, 20)
    write_clip(src / "train" / "cats" / "deeper" / "b.mp4", 6, 30)
    write_clip(src / "train" / "dogs" / "c.mkv", 5, 40)
    write_clip(src / "train" / "stray.mp4", 5, 50)  # no class folder: skipped, listed
    write_clip(src / "test" / "dogs" / "d.mp4", 7, 60)
    write_clip(src / "README.mp4", 5, 70)  # outside train/ and test/: not used, reported
    cfg = make_cfg(src, tmp_path / "tfds", labels=True)
    train = pipeline.load_videos(cfg, "train")
    test = pipeline.load_videos(cfg, "test")
    builder = pipeline._make_builder(cfg)
    assert builder.info.features["label"].names == ["cats", "dogs"]
    assert train.labels.tolist() == [0, 0, 1] and test.labels.tolist() == [1]
    assert_frames(train[1], 30, 6)
    summary = builder.build_summary()
    assert summary["layout"] == "split_folders"
    assert summary["splits"]["train"] == {"clips": 4, "written": 3, "skipped": {"no_class": 1}}
    assert summary["outside_splits"] == ["README.mp4"]
    ds = builder.as_data_source("train")
    assert [ds[i]["clip_id"].decode() for i in range(3)] == [
        "train/cats/a.mp4", "train/cats/deeper/b.mp4", "train/dogs/c.mkv"]


def test_the_split_depends_only_on_the_paths(tmp_path):
    """Same names, other folder and creation order: the same split."""
    names = [f"v{i}.mp4" for i in range(12)]
    for root, order in ((tmp_path / "one", names), (tmp_path / "two", names[::-1])):
        for name in order:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"")  # listing only: never decoded here
    one = video_folder.locate_folder(tmp_path / "one", 0.25)
    two = video_folder.locate_folder(tmp_path / "two", 0.25)
    assert [c.clip_id for c in one.clips["test"]] == [c.clip_id for c in two.clips["test"]]
    assert [c.clip_id for c in one.clips["test"]] == sorted(
        n for n, s in expected_splits(names, names, 0.25).items() if s == "test")


def test_restart_after_an_interrupted_build_redoes_only_the_missing_parts(tmp_path,
                                                                         monkeypatch):
    src = tmp_path / "src"
    for i in range(10):
        write_clip(src / f"n{i:02d}" / "clip.mp4", 5, 20 + 10 * i)
    cfg = make_cfg(src, tmp_path / "tfds", test_fraction=0.2, clips_per_shard=3)
    listing = video_folder.locate_folder(src, 0.2)
    train_ids = [c.clip_id for c in listing.clips["train"]]  # 8: parts of 3 + 3 + 2
    stop_at = train_ids[4]
    decoded: list[str] = []
    real_decode = video_decode.decode_clip

    def crash(path, *args, **kwargs):
        if os.fspath(path).endswith(stop_at):
            raise KeyboardInterrupt("simulated interruption")
        decoded.append(os.path.relpath(path, src))
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(video_decode, "decode_clip", crash)
    with pytest.raises(KeyboardInterrupt):
        pipeline.load_videos(cfg, "train")
    builder = pipeline._make_builder(cfg)
    assert not builder.is_prepared()
    assert os.path.exists(os.path.join(builder.work_dir, "train-part-00000.json"))

    def counting(path, *args, **kwargs):
        decoded.append(os.path.relpath(path, src))
        return real_decode(path, *args, **kwargs)

    monkeypatch.setattr(video_decode, "decode_clip", counting)
    decoded.clear()
    train = pipeline.load_videos(cfg, "train")
    test_ids = [c.clip_id for c in listing.clips["test"]]
    assert decoded == train_ids[3:] + test_ids  # train part 0 was not decoded again
    assert len(train) == 8 and len(pipeline.load_videos(cfg, "test")) == 2
    for i, clip_id in enumerate(train_ids):
        assert_frames(train[i], 20 + 10 * int(clip_id[1:3]), 5)


def _error(cfg) -> str:
    with pytest.raises(video_folder.VideoFolderError) as err:
        pipeline.load_videos(cfg, "train")
    return str(err.value)


def test_folders_that_make_no_dataset_fail_naming_counts_and_fix(tmp_path):
    data = tmp_path / "tfds"
    empty = tmp_path / "empty"
    empty.mkdir()
    msg = _error(make_cfg(empty, data))
    assert str(empty) in msg and "holds no files" in msg and ".mp4" in msg

    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"x")
    (junk / "b.txt").write_text("x")
    msg = _error(make_cfg(junk, data))
    assert str(junk) in msg and "no video file" in msg
    assert "{'image': 1, 'not_video': 1}" in msg and "ffmpeg -i" in msg

    few = tmp_path / "few"
    for i in range(3):
        write_clip(few / f"{i}.mp4", 5, 20)
    msg = _error(make_cfg(few, data, test_fraction=0.1))
    assert str(few) in msg and "test split" in msg and "rounds to 0" in msg
    assert "test_fraction=0.333" in msg and os.path.join(str(few), "test") in msg

    unreadable = tmp_path / "unreadable"
    write_corrupt(unreadable / "a.mp4")
    write_corrupt(unreadable / "b.mp4")
    (unreadable / "c.png").write_bytes(b"x")
    msg = _error(make_cfg(unreadable, data, test_fraction=0.5))
    assert str(unreadable) in msg and "no usable video" in msg
    assert "'decode_error': 1" in msg and "re-encode" in msg and "skipped_clips.tsv" in msg

    short = tmp_path / "short"
    for i in range(3):
        write_clip(short / f"{i}.mp4", 3, 20)
    msg = _error(make_cfg(short, data, test_fraction=0.4, min_frames=4))
    assert "'too_short': 2" in msg and "'too_short': 1" in msg
    assert "data.video_folder.min_frames=4" in msg and "data.clip_length" in msg
    for name in ("empty", "junk", "few", "unreadable", "short"):  # nothing half-prepared
        cfg = make_cfg(tmp_path / name, data)
        assert not pipeline._make_builder(cfg).is_prepared()

    (tmp_path / "half" / "train").mkdir(parents=True)
    write_clip(tmp_path / "half" / "train" / "a.mp4", 5, 20)
    assert "but no test/" in _error(make_cfg(tmp_path / "half", data))
    assert "labels=True" in _error(make_cfg(few, data, labels=True, test_fraction=0.5))
    unset = make_cfg(few, data)
    unset.video_folder.source_dir = None
    with pytest.raises(video_folder.VideoFolderError, match="source_dir is not set"):
        pipeline.load_videos(unset, "train")


def test_a_changed_folder_is_reported_not_mixed_in(built, caplog):
    cfg, _, _, builder = built
    src = cfg.video_folder.source_dir
    video_folder._CHECKED.clear()
    with caplog.at_level(logging.WARNING, logger="lvt_jax.data.video_folder"):
        pipeline.load_videos(cfg, "train")
    assert "changed" not in caplog.text
    write_clip(os.path.join(src, "new", "added.mp4"), 5, 20)
    try:
        video_folder._CHECKED.clear()
        with caplog.at_level(logging.WARNING, logger="lvt_jax.data.video_folder"):
            videos = pipeline.load_videos(cfg, "train")
        assert "changed after it was prepared" in caplog.text and builder.data_dir in caplog.text
        assert len(videos) == builder.info.splits["train"].num_examples  # the prepared copy
    finally:
        os.remove(os.path.join(src, "new", "added.mp4"))
        os.rmdir(os.path.join(src, "new"))


def test_validate_checks_classes_and_the_test_split_before_training(built, tmp_path):
    from configs import video_folder as config_file
    cfg, _, test, _ = built
    c = config_file.get_config("tiny")
    c.data.data_dir = cfg.data_dir
    c.data.video_folder.update(cfg.video_folder.to_dict())
    c.data.image_size = SIZE
    c.transformer.model.clip_shape = (4, SIZE // 4, SIZE // 4)
    validate.dataset(c)  # prepared, unlabelled, no evaluation: fine
    with pytest.raises(ValueError, match=rf"has {len(test)} videos, fewer than .*"
                                         rf"videos_per_trial={len(test)}"):
        validate.dataset(c, evaluation=True)
    c.eval.in_pipeline = False
    c.data.image_size, c.transformer.model.clip_shape = 64, (4, 16, 16)
    src = tmp_path / "classes"
    for cls in ("a", "b", "c"):
        for i in range(2):
            write_clip(src / cls / f"{i}.mp4", 5, 20)
    c.data.video_folder.update(source_dir=str(src), labels=True, test_fraction=0.5)
    c.transformer.model.num_classes = 2
    with pytest.raises(ValueError, match="has 3 classes .*num_classes=3"):
        validate.transformer(c, mesh_of(8))  # from the listing: nothing is decoded
    assert not pipeline._make_builder(c.data).is_prepared()


def test_whole_pipeline_on_a_folder_with_only_its_path(tmp_path):
    """`--mode=all` of configs/video_folder.py:tiny given nothing but the folder (the data
    directory comes from TFDS_DATA_DIR, as a user's default would)."""
    src = tmp_path / "my videos"
    for i in range(10):
        write_clip(src / f"take {i}.mov", 6 + i % 3, 20 + 10 * i)
    work = tmp_path / "work"
    env = dict(os.environ, PYTHONPATH=ROOT, TFDS_DATA_DIR=str(tmp_path / "tfds"))
    out = subprocess.run(
        [sys.executable, "-m", "lvt_jax.main", "--config=configs/video_folder.py:tiny",
         f"--workdir={work}", f"--config.data.video_folder.source_dir={src}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (work / "vqvae" / "eval.json").exists() and (work / "transformer" / "eval.json").exists()
    meta = json.loads((work / "codes" / "train" / "metadata.json").read_text())
    assert meta["num_videos"] == 9 and meta["data"]["video_folder"]["source_dir"] == str(src)
    samples = json.loads((work / "samples" / "samples.json").read_text())
    assert samples["num_videos"] == 1 and samples["n_prime"] == 2
    assert "video_folder: wrote {'train': 9, 'test': 1}" in out.stderr


def test_config_variants():
    from configs import bair, demo
    from configs import video_folder as config_file
    from lvt_jax import summary
    c = config_file.get_config()
    assert c.data.name == "video_folder" and c.data.clip_length == 16
    assert c.data.video_folder.min_frames == 16 and c.sample.n_prime == 5
    assert c.vqvae.model == demo.get_config().vqvae.model  # the demo's sizes by default
    assert c.transformer.model.d_model == 128 and c.transformer.model.vocab_size == 512
    paper = config_file.get_config("paper")
    assert summary.vqvae_counts(paper)[0] == summary.vqvae_counts(bair.get_config())[0]
    assert summary.transformer_counts(paper)[0]["total"] == 49_872_384  # the paper's DSFVT
    assert config_file.get_config("paper,dstsvt").transformer.model.variant == "dstsvt"
    with pytest.raises(ValueError, match="unknown variant"):
        config_file.get_config("huge")
    for arg in ("tiny", "dstsvt,tiny"):
        tiny = config_file.get_config(arg)
        validate.vqvae(tiny, mesh_of(8))
        validate.transformer(tiny, mesh_of(8))
        with pytest.raises(video_folder.VideoFolderError, match="source_dir is not set"):
            validate.pipeline(tiny, mesh_of(8))  # --mode=all without the folder: at once
