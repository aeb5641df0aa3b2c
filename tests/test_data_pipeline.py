"""Tests for the run-time input pipeline (tfds data_source + grain, numpy only)."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap
import time

import ml_collections
import numpy as np
import pytest

from lvt_jax.data import pipeline
from lvt_jax.data import synthetic_pushing as sp

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_TEST, T = 12, 6, 30


def make_cfg(data_dir: str, **overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        {
            "name": "synthetic_pushing",
            "data_dir": data_dir,
            "bair_source_dir": None,
            "synthetic": {"num_train": NUM_TRAIN, "num_test": NUM_TEST, "seed": 0},
            "clip_length": 16,
            "worker_count": 0,
            "prefetch": 2,
        }
    )
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> ml_collections.ConfigDict:
    return make_cfg(str(tmp_path_factory.mktemp("tfds")))


@pytest.fixture(scope="module")
def train_set(cfg) -> dict[str, np.ndarray]:
    return sp.generate_videos(0, "train", 0, NUM_TRAIN)


@pytest.fixture(scope="module")
def test_set(cfg) -> dict[str, np.ndarray]:
    return sp.generate_videos(0, "test", 0, NUM_TEST)


@pytest.fixture(scope="module")
def train_videos(train_set) -> np.ndarray:
    return train_set["video"]


@pytest.fixture(scope="module")
def test_videos(test_set) -> np.ndarray:
    return test_set["video"]


def take(it, n: int) -> list[dict[str, np.ndarray]]:
    return [next(it) for _ in range(n)]


def test_load_videos_builds_once_and_reads_numpy(cfg, test_videos, monkeypatch):
    videos = pipeline.load_videos(cfg, "test")
    assert len(videos) == NUM_TEST
    assert videos.video_shape == (T, 64, 64, 3)
    np.testing.assert_array_equal(videos[4], test_videos[4])
    def rebuild(*args, **kwargs):
        raise AssertionError("the prepared dataset was built again")
    monkeypatch.setattr(sp.SyntheticPushing, "download_and_prepare", rebuild)
    monkeypatch.setattr(sp, "generate_videos", rebuild)
    train = pipeline.load_videos(cfg, "train")  # already prepared: no regeneration
    assert len(train) == NUM_TRAIN
    assert "tensorflow" not in sys.modules
    with pytest.raises(ValueError, match="split"):
        pipeline.load_videos(cfg, "validation")


def test_train_frames_are_the_shuffled_samples(cfg, train_videos):
    it = pipeline.make_iterator(cfg, "train", "frames", 8, None, seed=5, train=True)
    batches = take(it, 3)
    n = NUM_TRAIN * T
    for step, batch in enumerate(batches):
        assert set(batch) == {"image"}
        assert batch["image"].shape == (8, 64, 64, 3) and batch["image"].dtype == np.uint8
        for row in range(8):
            item = pipeline.shuffled_item(5, step * 8 + row, n)
            np.testing.assert_array_equal(batch["image"][row], train_videos[item // T][item % T])
    assert it.steps_per_epoch == 45
    with pytest.raises(TypeError):
        len(it)


def test_shuffle_is_a_new_permutation_every_epoch():
    n = 50
    epoch0 = [pipeline.shuffled_item(3, g, n) for g in range(n)]
    epoch1 = [pipeline.shuffled_item(3, g, n) for g in range(n, 2 * n)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(n))
    assert epoch0 != epoch1 and epoch0 != list(range(n))
    assert epoch0 != [pipeline.shuffled_item(4, g, n) for g in range(n)]


def test_train_clips_random_windows(cfg, train_videos):
    it = pipeline.make_iterator(cfg, "train", "clips", 4, None, seed=1, train=True)
    starts = []
    for step, batch in enumerate(take(it, 6)):
        assert set(batch) == {"video"}
        assert batch["video"].shape == (4, 16, 64, 64, 3) and batch["video"].dtype == np.uint8
        for row in range(4):
            g = step * 4 + row
            video = train_videos[pipeline.shuffled_item(1, g, NUM_TRAIN)]
            start = int(pipeline.sample_rng(1, g).integers(0, T - 16 + 1))
            np.testing.assert_array_equal(batch["video"][row], video[start : start + 16])
            starts.append(start)
    assert len(set(starts)) > 3, "train windows must start at varying frames"


@pytest.mark.parametrize("kind, batch_size", [("frames", 7), ("clips", 4)])
def test_eval_covers_every_sample_exactly_once(cfg, test_videos, kind, batch_size):
    it = pipeline.make_iterator(cfg, "test", kind, batch_size, None, seed=0, train=False)
    batches = list(it)
    n = NUM_TEST * T if kind == "frames" else NUM_TEST
    assert len(batches) == len(it) == it.steps_per_epoch == -(-n // batch_size)
    key = "image" if kind == "frames" else "video"
    data = np.concatenate([b[key] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == np.float32 and mask.shape == (len(batches) * batch_size,)
    np.testing.assert_array_equal(mask, (np.arange(mask.size) < n).astype(np.float32))
    expected = test_videos.reshape(-1, 64, 64, 3) if kind == "frames" else test_videos[:, :16]
    np.testing.assert_array_equal(data[:n], expected)  # in order, first 16 frames for clips
    assert not data[n:].any(), "padding rows are zeros"
    # Exhausted; reset() runs the same pass again.
    with pytest.raises(StopIteration):
        next(it)
    it.reset()
    np.testing.assert_array_equal(next(it)[key], batches[0][key])


WITH_MASKS = ("video", pipeline.INSTANCE_MASK)


def test_clips_carry_instance_masks_in_the_video_window(cfg, train_set, test_set):
    # Train: a random window per clip; the mask is cut at the same start as the video.
    it = pipeline.make_iterator(cfg, "train", "clips", 4, None, seed=1, train=True,
                                features=WITH_MASKS)
    starts = set()
    for step, batch in enumerate(take(it, 3)):
        assert set(batch) == {"video", "instance_mask"}
        assert batch["instance_mask"].shape == (4, 16, 64, 64)
        assert batch["instance_mask"].dtype == np.uint8
        for row in range(4):
            g = step * 4 + row
            item = pipeline.shuffled_item(1, g, NUM_TRAIN)
            start = int(pipeline.sample_rng(1, g).integers(0, T - 16 + 1))
            window = slice(start, start + 16)
            np.testing.assert_array_equal(batch["video"][row], train_set["video"][item][window])
            np.testing.assert_array_equal(
                batch["instance_mask"][row], train_set["instance_mask"][item][window]
            )
            starts.add(start)
    assert len(starts) > 3, "varying windows, so a misaligned mask would show"
    # The same batches as without masks: asking for them changes nothing else.
    plain = take(pipeline.make_iterator(cfg, "train", "clips", 4, None, seed=1, train=True), 3)
    it = pipeline.make_iterator(cfg, "train", "clips", 4, None, seed=1, train=True,
                                features=WITH_MASKS)
    for want, batch in zip(plain, take(it, 3)):
        np.testing.assert_array_equal(batch["video"], want["video"])
    # Eval: first 16 frames, the padding rows' masks zero, 'mask' still the padding key.
    batches = list(pipeline.make_iterator(cfg, "test", "clips", 4, None, seed=0, train=False,
                                          features=WITH_MASKS))
    assert all(set(b) == {"video", "instance_mask", "mask"} for b in batches)
    masks = np.concatenate([b["instance_mask"] for b in batches])
    np.testing.assert_array_equal(masks[:NUM_TEST], test_set["instance_mask"][:, :16])
    assert not masks[NUM_TEST:].any()
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches]),
                                  np.arange(len(masks)) < NUM_TEST)


def test_load_videos_with_instance_masks(cfg, test_set):
    videos = pipeline.load_videos(cfg, "test", features=WITH_MASKS)
    assert videos.extra_features == ("instance_mask",)
    np.testing.assert_array_equal(videos[3], test_set["video"][3])  # videos[i]: still video i
    mask = videos.feature(3, "instance_mask")
    assert mask.shape == (T, 64, 64) and mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, test_set["instance_mask"][3])
    item = videos.item(2)
    assert set(item) == {"video", "instance_mask"}
    np.testing.assert_array_equal(item["instance_mask"], test_set["instance_mask"][2])
    assert not mask.flags.writeable, "cached arrays are shared: read-only"
    # A source loaded without masks says how to get them.
    with pytest.raises(ValueError, match=r"features=\('video', 'instance_mask'\)"):
        pipeline.load_videos(cfg, "test").feature(0, "instance_mask")


def test_tiny_fixture_dataset_has_masks(tiny_data_dir):
    from tests.helpers import tiny_config

    videos = pipeline.load_videos(tiny_config(tiny_data_dir).data, "test", features=WITH_MASKS)
    assert len(videos) == 4
    assert len(list(pathlib.Path(tiny_data_dir).glob("synthetic_pushing/*/2.0.0"))) == 1
    np.testing.assert_array_equal(
        videos.feature(1, "instance_mask"), sp.generate_videos(0, "test", 1, 1)["instance_mask"][0]
    )


@pytest.mark.parametrize("name", ["bair", "kinetics600"])
def test_instance_masks_refused_for_datasets_without_them(tmp_path, name):
    cfg = make_cfg(str(tmp_path / "tfds"), name=name, bair_source_dir=str(tmp_path / "none"))
    cfg.kinetics = {"source_dir": str(tmp_path / "none")}
    match = rf"data.name='{name}'.*'instance_mask'.*data.name=synthetic_pushing.*metrics"
    with pytest.raises(ValueError, match=match):
        pipeline.check_features(cfg, WITH_MASKS)  # from the config alone
    with pytest.raises(ValueError, match=match):
        pipeline.make_iterator(cfg, "train", "clips", 4, None, seed=0, train=True,
                               features=WITH_MASKS)
    with pytest.raises(ValueError, match=match):
        pipeline.load_videos(cfg, "test", features=WITH_MASKS)
    assert not (tmp_path / "tfds").exists(), "refused before anything is prepared"


def test_feature_requests_are_checked(cfg):
    assert pipeline.check_features(cfg, WITH_MASKS) == ("instance_mask",)
    assert pipeline.check_features(cfg, ("video",)) == ()
    assert "synthetic_pushing" in pipeline.DATASETS_WITH_INSTANCE_MASKS
    with pytest.raises(ValueError, match="padding.*'instance_mask'"):
        pipeline.check_features(cfg, ("video", "mask"))
    for bad in [("instance_mask",), ("video", "depth"), ("video", "video")]:
        with pytest.raises(ValueError, match="features must be 'video' plus"):
            pipeline.check_features(cfg, bad)
    with pytest.raises(ValueError, match="kind='clips' only"):
        pipeline.make_iterator(cfg, "test", "frames", 4, None, seed=0, train=False,
                               features=WITH_MASKS)


def test_old_version_copy_is_rebuilt_not_misread(tmp_path):
    """A data_dir holding a 1.0.0 copy (no masks) gets a 2.0.0 copy beside it."""
    import tensorflow_datasets as tfds

    class PushingV1(sp.SyntheticPushing, skip_registration=True):
        name = "synthetic_pushing"
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            info = super()._info()
            features = {k: v for k, v in info.features.items() if k != "instance_mask"}
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
                features), disable_shuffling=True)

        def _generate_examples(self, seed, split, count):
            for i, example in super()._generate_examples(seed, split, count):
                del example["instance_mask"]
                yield i, {**example, "video": np.zeros_like(example["video"])}  # recognisable

    cfg = make_cfg(str(tmp_path), synthetic={"num_train": 2, "num_test": 2, "seed": 0})
    old = PushingV1(config=sp.make_config(2, 2, 0), data_dir=str(tmp_path),
                    file_format="array_record")
    old.download_and_prepare()
    assert old.data_path.name == "1.0.0"
    old_files = sorted(p.name for p in old.data_path.iterdir())
    videos = pipeline.load_videos(cfg, "test", features=WITH_MASKS)
    expected = sp.generate_videos(0, "test", 0, 2)
    np.testing.assert_array_equal(videos[1], expected["video"][1])  # not the old zeros
    np.testing.assert_array_equal(videos.feature(1, "instance_mask"), expected["instance_mask"][1])
    versions = sorted(p.name for p in (tmp_path / "synthetic_pushing" / "train2_test2_seed0").iterdir())
    assert versions == ["1.0.0", "2.0.0"]
    assert sorted(p.name for p in old.data_path.iterdir()) == old_files, "old copy untouched"


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("process_count", [2, 4])
def test_global_batch_independent_of_process_count(cfg, train, process_count):
    kw = dict(seed=11, train=train)
    single = take(pipeline.make_iterator(cfg, "test", "clips", 8, None, **kw), 3 if train else 1)
    per_process = [
        take(
            pipeline.make_iterator(
                cfg, "test", "clips", 8, None, process_index=p, process_count=process_count, **kw
            ),
            len(single),
        )
        for p in range(process_count)
    ]
    for step, whole in enumerate(single):
        for key in whole:
            rows = [per_process[p][step][key] for p in range(process_count)]
            assert all(r.shape[0] == 8 // process_count for r in rows)
            np.testing.assert_array_equal(np.concatenate(rows), whole[key])


def test_resume_continues_exactly(cfg):
    def make():
        return pipeline.make_iterator(cfg, "train", "clips", 4, None, seed=2, train=True)

    reference = take(make(), 12)  # 12 * 4 = 48 > 12 videos: crosses epoch boundaries
    it = make()
    take(it, 5)
    time.sleep(0.2)  # let the prefetcher run ahead
    state = it.get_state()
    assert state["step"] == 5, "state counts consumed batches, not prefetched ones"
    saved = json.loads(json.dumps(state))
    it.close()
    resumed = make()
    resumed.set_state(saved)
    for want in reference[5:]:
        np.testing.assert_array_equal(next(resumed)["video"], want["video"])
    # Rewinding an iterator in place works too.
    resumed.set_state({"step": 1})
    np.testing.assert_array_equal(next(resumed)["video"], reference[1]["video"])
    other = pipeline.make_iterator(cfg, "train", "clips", 4, None, seed=3, train=True)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(saved)


def test_make_array_iterator_generic_source():
    # Stage 2 reuses this with latent-code sequences: any len()/getitem source works.
    source = np.arange(10 * 3).reshape(10, 3)

    def transform(src, index, rng):
        return {"codes": src[index], "noise": rng.integers(0, 1000, ())}

    it = pipeline.make_array_iterator(source, transform, 10, 4, None, seed=0, train=False)
    batches = list(it)
    assert len(batches) == 3
    codes = np.concatenate([b["codes"] for b in batches])
    np.testing.assert_array_equal(codes[:10], source)
    np.testing.assert_array_equal(np.concatenate([b["mask"] for b in batches])[10:], [0, 0])
    train = pipeline.make_array_iterator(source, transform, 10, 5, None, seed=0, train=True)
    seen = np.concatenate([next(train)["codes"][:, 0] // 3 for _ in range(2)])
    assert sorted(seen.tolist()) == list(range(10)), "one epoch visits every item once"
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_array_iterator(
            source, transform, 10, 5, None, seed=0, train=True, process_count=2, process_index=0
        )


def test_grain_workers_give_the_same_batches(cfg):
    reference = take(pipeline.make_iterator(cfg, "train", "frames", 6, None, seed=4, train=True), 4)
    it = pipeline.make_iterator(
        make_cfg(cfg.data_dir, worker_count=2), "train", "frames", 6, None, seed=4, train=True
    )
    try:
        for want in reference:
            np.testing.assert_array_equal(next(it)["image"], want["image"])
    finally:
        it.close()


def check_sharded(cfg_dict: dict) -> None:
    """Global arrays on 8 devices: right sharding, shapes and values (vs local numpy rows)."""
    import jax
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    assert jax.device_count() >= 8, jax.devices()
    cfg = ml_collections.ConfigDict(cfg_dict)
    for shape in [(8, 1, 1), (2, 2, 2)]:
        mesh = Mesh(np.array(jax.devices()[:8]).reshape(shape), ("data", "fsdp", "tensor"))
        # A rank-4 batch spec, as the trainer builds it; the pipeline uses its batch axis.
        sharding = NamedSharding(mesh, P(("data", "fsdp"), None, None, None))
        for kind, train in [("frames", True), ("clips", False)]:
            kw = dict(seed=9, train=train)
            if kind == "clips":  # with the rank-4 uint8 instance masks
                kw["features"] = ("video", pipeline.INSTANCE_MASK)
            it = pipeline.make_iterator(cfg, "test", kind, 16, sharding, **kw)
            ref = pipeline.make_iterator(cfg, "test", kind, 16, None, **kw)
            for _ in range(2 if train else len(it)):
                batch, want = next(it), next(ref)
                assert set(batch) == set(want), (set(batch), set(want))
                for key, array in batch.items():
                    assert isinstance(array, jax.Array), type(array)
                    assert array.shape == want[key].shape and array.dtype == want[key].dtype
                    assert array.sharding.spec == P(("data", "fsdp")), array.sharding
                    assert array.sharding.mesh == mesh
                    np.testing.assert_array_equal(np.asarray(array), want[key])
                    rows = 16 // (shape[0] * shape[1])
                    assert len(array.addressable_shards) == 8
                    for shard in array.addressable_shards:
                        assert shard.data.shape[0] == rows
                        expected = want[key][shard.index]
                        np.testing.assert_array_equal(np.asarray(shard.data), expected)
    with pytest.raises(ValueError, match="divisible"):
        pipeline.make_iterator(cfg, "test", "frames", 10, sharding, seed=0, train=True)


def test_sharded_global_arrays_on_8_fake_devices(cfg):
    import jax

    if jax.device_count() >= 8:  # e.g. a conftest forced 8 host devices
        check_sharded(cfg.to_dict())
        return
    pipeline.load_videos(cfg, "test")  # prepare here, so the subprocess only reads
    script = textwrap.dedent(
        f"""
        import importlib.util, json, sys
        spec = importlib.util.spec_from_file_location("t", {str(pathlib.Path(__file__))!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.check_sharded(json.loads(sys.argv[1]))
        print("RESULT ok")
        """
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-c", script, json.dumps(cfg.to_dict())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "RESULT ok" in result.stdout


def test_reading_works_without_tensorflow(cfg):
    import importlib.util

    import tensorflow_datasets as tfds

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("TensorFlow is installed here; TF-free reading is checked where it is absent")
    batch = next(pipeline.make_iterator(cfg, "test", "clips", 2, None, seed=0, train=False))
    assert batch["video"].shape == (2, 16, 64, 64, 3)
    # The stored dataset is also readable by name through the plain tfds API.
    name = "synthetic_pushing/" + sp.make_config(**cfg.synthetic.to_dict()).name
    source = tfds.data_source(name, split="test", data_dir=cfg.data_dir, download=False)
    assert len(source) == NUM_TEST
    np.testing.assert_array_equal(
        source[0]["video"], sp.generate_videos(0, "test", 0, 1)["video"][0]
    )
    assert "tensorflow" not in sys.modules


def test_preparing_prints_what_happens_not_tfds_download_lines(tmp_path, capsys, caplog):
    """Our builders download nothing: tfds's "Downloading and preparing" lines are noise."""
    cfg = make_cfg(str(tmp_path), synthetic={"num_train": 2, "num_test": 1, "seed": 0})
    with caplog.at_level("INFO"):
        assert len(pipeline.load_videos(cfg, "train")) == 2
        assert len(pipeline.load_videos(cfg, "test")) == 1  # prepared: said once
    out = capsys.readouterr()
    printed = out.out + out.err
    assert "Downloading and preparing" not in printed and "downloaded and prepared" not in printed
    logged = [r.getMessage() for r in caplog.records]
    assert not any("Using custom data configuration" in m or "dataset_info.json" in m
                   for m in logged), logged
    ours = [m for m in logged if m.startswith(("Preparing synthetic_pushing", "Prepared "))]
    assert len(ours) == 2 and "nothing is downloaded" in ours[0], ours
