"""Tests for the BAIR builder, using tiny TFRecords written here in the original layout."""

from __future__ import annotations

import os
import tarfile

import ml_collections
import numpy as np
import pytest

from lvt_jax.data import bair, tfrecord

# file name -> number of videos. "traj_10_to_11" must sort after "traj_2_to_9" (numeric).
TRAIN_FILES = {"traj_0_to_1.tfrecords": 2, "traj_10_to_11.tfrecords": 2, "traj_2_to_9.tfrecords": 1}
TEST_FILES = {"traj_0_to_1.tfrecords": 2}
TRAIN_ORDER = ["traj_0_to_1.tfrecords", "traj_2_to_9.tfrecords", "traj_10_to_11.tfrecords"]


def _video(split: str, name: str, index: int) -> dict[str, np.ndarray]:
    """Deterministic fake BAIR video content for (split, file, record index)."""
    rng = np.random.default_rng([hash_name(split), hash_name(name), index])
    return {
        "aux1": rng.integers(0, 256, (30, 64, 64, 3), dtype=np.uint8),
        "main": rng.integers(0, 256, (30, 64, 64, 3), dtype=np.uint8),
        "action": rng.normal(size=(30, 4)).astype(np.float32),
        "endeffector_pos": rng.normal(size=(30, 3)).astype(np.float32),
    }


def hash_name(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")


def _original_example(v: dict[str, np.ndarray]) -> bytes:
    features = {}
    for t in range(30):
        features[f"{t}/image_aux1/encoded"] = v["aux1"][t].tobytes()
        features[f"{t}/image_main/encoded"] = v["main"][t].tobytes()
        features[f"{t}/action"] = v["action"][t]
        features[f"{t}/endeffector_pos"] = v["endeffector_pos"][t]
    return tfrecord.make_example(features)


def _write_extracted(root: str) -> None:
    for split, files in (("train", TRAIN_FILES), ("test", TEST_FILES)):
        split_dir = os.path.join(root, "softmotion30_44k", split)
        os.makedirs(split_dir, exist_ok=True)
        for name, count in files.items():
            records = [_original_example(_video(split, name, i)) for i in range(count)]
            tfrecord.write_records(os.path.join(split_dir, name), records)


def _expected(split: str) -> list[dict[str, np.ndarray]]:
    order = TRAIN_ORDER if split == "train" else list(TEST_FILES)
    files = TRAIN_FILES if split == "train" else TEST_FILES
    return [_video(split, name, i) for name in order for i in range(files[name])]


@pytest.fixture(scope="module")
def extracted_dir(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("bair_extracted"))
    _write_extracted(root)
    return root


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory, extracted_dir) -> str:
    root = str(tmp_path_factory.mktemp("bair_archive"))
    with tarfile.open(os.path.join(root, bair.ARCHIVE_NAME), "w") as tar:
        tar.add(os.path.join(extracted_dir, "softmotion30_44k"), arcname="softmotion30_44k")
    return root


def _check_prepared(builder) -> None:
    sources = builder.as_data_source()
    for split in ("train", "test"):
        expected = _expected(split)
        assert len(sources[split]) == len(expected)
        for i, want in enumerate(expected):
            got = sources[split][i]
            assert got["video"].dtype == np.uint8 and got["video"].shape == (30, 64, 64, 3)
            np.testing.assert_array_equal(got["video"], want["aux1"])  # camera image_aux1
            np.testing.assert_array_equal(got["image_main"], want["main"])
            np.testing.assert_array_equal(got["action"], want["action"])
            np.testing.assert_array_equal(got["endeffector_pos"], want["endeffector_pos"])


@pytest.mark.parametrize("layout", ["extracted", "archive"])
def test_builder_from_local_files(tmp_path, extracted_dir, archive_dir, layout):
    source_dir = extracted_dir if layout == "extracted" else archive_dir
    source = bair.locate_source(source_dir)
    assert (source.archive is None) == (layout == "extracted")
    builder = bair.BairRobotPushing(
        source_dir=source_dir, data_dir=str(tmp_path), file_format="array_record"
    )
    builder.download_and_prepare()
    assert builder.is_prepared()
    _check_prepared(builder)
    # Once prepared, reading needs no source files at all.
    reader = bair.BairRobotPushing(data_dir=str(tmp_path), file_format="array_record")
    assert len(reader.as_data_source(split="test")) == 2


def test_extracted_split_dirs_given_directly(extracted_dir):
    source = bair.locate_source(os.path.join(extracted_dir, "softmotion30_44k"))
    assert [os.path.basename(p) for p in source.files["train"]] == TRAIN_ORDER


def _fail_if_reached(what: str):
    def reached(*args, **kwargs):
        raise AssertionError(f"{what} started before the missing files were reported")
    return reached


@pytest.mark.parametrize("case", ["missing_dir", "empty_dir", "only_train", "unset"])
def test_missing_files_fail_fast_with_a_clear_message(tmp_path, case, monkeypatch):
    source_dir = str(tmp_path / "bair_files")
    if case != "missing_dir":
        os.makedirs(source_dir)
    if case == "only_train":
        os.makedirs(os.path.join(source_dir, "softmotion30_44k", "train"))
        tfrecord.write_records(
            os.path.join(source_dir, "softmotion30_44k", "train", "a.tfrecords"), []
        )
    if case == "unset":
        source_dir = None
    builder = bair.BairRobotPushing(
        source_dir=source_dir, data_dir=str(tmp_path / "tfds"), file_format="array_record"
    )
    # fast: no record is read (nor any archive member extracted) before the error
    monkeypatch.setattr(bair.BairSource, "open_records", _fail_if_reached("reading records"))
    with pytest.raises(bair.BairSourceNotFoundError) as info:
        builder.download_and_prepare()
    message = str(info.value)
    assert bair.ARCHIVE_NAME in message and "softmotion30_44k" in message
    if case == "unset":
        assert "bair_source_dir" in message
    else:
        assert source_dir in message
    if case == "only_train":
        assert os.path.join("softmotion30_44k", "test") in message
    assert not builder.is_prepared()


def test_pipeline_load_videos_fails_fast_without_files(tmp_path, monkeypatch):
    from lvt_jax.data import pipeline

    cfg = ml_collections.ConfigDict(
        {
            "name": "bair",
            "data_dir": str(tmp_path / "tfds"),
            "bair_source_dir": str(tmp_path / "nowhere"),
        }
    )
    # fast: the files are checked before tfds starts preparing anything
    monkeypatch.setattr(bair.BairRobotPushing, "download_and_prepare",
                        _fail_if_reached("the tfds preparation"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        pipeline.load_videos(cfg, "train")
    assert not os.path.exists(tmp_path / "tfds" / "bair_robot_pushing")


def test_pipeline_reads_prepared_bair(tmp_path, extracted_dir):
    from lvt_jax.data import pipeline

    cfg = ml_collections.ConfigDict(
        {
            "name": "bair",
            "data_dir": str(tmp_path),
            "bair_source_dir": extracted_dir,
            "clip_length": 16,
        }
    )
    videos = pipeline.load_videos(cfg, "test")
    assert len(videos) == 2
    np.testing.assert_array_equal(videos[1], _expected("test")[1]["aux1"])
    it = pipeline.make_iterator(cfg, "test", "clips", 4, None, seed=0, train=False)
    (batch,) = list(it)
    np.testing.assert_array_equal(batch["mask"], [1, 1, 0, 0])
    np.testing.assert_array_equal(batch["video"][0], _expected("test")[0]["aux1"][:16])


def test_wrong_frame_encoding_is_rejected():
    v = _video("train", "x", 0)
    features = {}
    for t in range(30):
        features[f"{t}/image_aux1/encoded"] = b"\x89PNG not raw"
        features[f"{t}/image_main/encoded"] = v["main"][t].tobytes()
        features[f"{t}/action"] = v["action"][t]
        features[f"{t}/endeffector_pos"] = v["endeffector_pos"][t]
    with pytest.raises(ValueError, match="raw 64x64x3"):
        bair.decode_example(tfrecord.make_example(features))
    with pytest.raises(ValueError, match="missing"):
        bair.decode_example(tfrecord.make_example({"0/action": [1.0, 2.0, 3.0, 4.0]}))
