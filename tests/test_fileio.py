"""The path layer (lvt_jax.fileio) on a filesystem that is not local: fsspec's memory://
and an in-memory gs:// (tests/fake_gcs.py), through the same calls the project makes."""
import os
import struct
import uuid

import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import _registry, known_implementations

from lvt_jax import fileio
from tests import fake_gcs


@pytest.fixture
def bucket():
    """A fresh memory:// folder (the memory store is shared by the whole process)."""
    root = f"memory://lvt-test-{uuid.uuid4().hex[:8]}"
    yield root
    fileio.rmtree(root)


def test_names_of_local_paths_and_urls(tmp_path):
    assert fileio.protocol("gs://b/x") == "gs" and fileio.protocol("/a/b") is None
    assert fileio.protocol("file:///a/b") is None and not fileio.is_remote("rel/dir")
    assert fileio.absolute("gs://b/run/") == "gs://b/run"
    assert fileio.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")
    assert fileio.absolute("file:///tmp/x") == "/tmp/x"
    assert fileio.join("gs://b/run", "vqvae", "tb") == "gs://b/run/vqvae/tb"
    assert fileio.dirname("gs://b/run/x.json") == "gs://b/run"
    assert fileio.basename("gs://b/run/samples/") == "samples"
    fileio.write_text(f"file://{tmp_path}/a.txt", "hi")  # file:// is local
    assert (tmp_path / "a.txt").read_text() == "hi"


def test_atomic_writes_and_listing_in_memory_store(bucket):
    run = fileio.join(bucket, "run")
    fileio.makedirs(fileio.join(run, "eval"))
    fileio.write_json(fileio.join(run, "eval", "eval.json"), {"fvd": 1.5})
    fileio.write_bytes(fileio.join(run, "a.bin"), b"old")
    assert sorted(fileio.listdir(run)) == ["a.bin", "eval"]
    assert fileio.isdir(fileio.join(run, "eval")) and fileio.isfile(fileio.join(run, "a.bin"))
    assert fileio.read_json(fileio.join(run, "eval", "eval.json")) == {"fvd": 1.5}
    assert fileio.read_json(fileio.join(run, "missing.json")) is None
    assert fileio.getsize(fileio.join(run, "a.bin")) == 3

    target = fileio.join(run, "a.bin")
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(target) as f:
            f.write(b"half of the new cont")
            assert fileio.read_bytes(target) == b"old"  # nothing visible while writing
            raise RuntimeError("killed mid-write")
    assert fileio.read_bytes(target) == b"old"  # a failed rewrite keeps the old file
    with pytest.raises(RuntimeError):
        with fileio.atomic_write(fileio.join(run, "new.bin")) as f:
            f.write(b"partial")
            raise RuntimeError("killed mid-write")
    assert sorted(fileio.listdir(run)) == ["a.bin", "eval"]  # and leaves nothing else

    fileio.rename(fileio.join(run, "eval"), fileio.join(run, "eval.old"))
    assert sorted(fileio.listdir(run)) == ["a.bin", "eval.old"]
    assert fileio.read_json(fileio.join(run, "eval.old", "eval.json")) == {"fvd": 1.5}
    fileio.rmtree(fileio.join(run, "eval.old"))
    fileio.remove(fileio.join(run, "a.bin"))
    assert fileio.listdir(run) == []
    with pytest.raises(FileNotFoundError):
        fileio.listdir(fileio.join(run, "nope"))


def test_local_failed_write_leaves_no_file(tmp_path):
    path = str(tmp_path / "x.json")
    with pytest.raises(ValueError):
        with fileio.atomic_write(path, "w") as f:
            f.write("{")
            raise ValueError
    assert os.listdir(tmp_path) == []


def test_staged_write_keeps_the_extension_for_format_choosing_writers(bucket):
    from PIL import Image
    path = fileio.join(bucket, "grid.png")
    with fileio.staged_write(path, keep_ext=True) as tmp:
        assert tmp.endswith(".png") and not fileio.is_remote(tmp)
        Image.fromarray(np.full((4, 6, 3), 7, np.uint8)).save(tmp)  # format from the name
    with fileio.open(path) as f:
        assert np.asarray(Image.open(f)).shape == (4, 6, 3)


def test_upload_tree_copies_completion_markers_last(bucket, tmp_path, monkeypatch):
    for rel in ("b/shard-0", "dataset_info.json", "a-shard", "features.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(rel)
    order = []
    real = MemoryFileSystem.put_file

    def put_file(self, lpath, rpath, *args, **kwargs):
        order.append(rpath.rsplit("/", 1)[-1])
        return real(self, lpath, rpath, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "put_file", put_file)
    dest = fileio.join(bucket, "ds")
    fileio.upload_tree(str(tmp_path), dest, last=("features.json", "dataset_info.json"))
    assert set(order[-2:]) == {"features.json", "dataset_info.json"} and len(order) == 4
    assert fileio.read_text(fileio.join(dest, "b", "shard-0")) == "b/shard-0"


def _records(data: bytes) -> list[bytes]:
    """The records of a TFRecord/event file (length, crc, data, crc)."""
    out, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack("Q", data[pos:pos + 8])
        out.append(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
    return out


def test_tensorboard_logs_in_a_bucket(bucket):
    from tensorboardX.proto import event_pb2

    from lvt_jax import writers
    logdir = fileio.join(bucket, "vqvae", "tb")
    w = writers.MetricWriter(logdir)
    w.scalars(3, {"train/loss": 0.25})
    w.close()
    (name,) = fileio.listdir(logdir)
    assert "tfevents" in name
    events = [event_pb2.Event.FromString(r) for r in
              _records(fileio.read_bytes(fileio.join(logdir, name)))]
    values = [(e.step, v.tag, v.simple_value) for e in events for v in e.summary.value]
    assert values == [(3, "train/loss", 0.25)]

    # an object cannot be appended to: past roll_bytes the next flush starts a new file
    f = writers._RemoteEventFile(fileio.join(bucket, "ev", "events.out.tfevents.1.h"), 10)
    f.write(b"x" * 12)
    f.flush()
    f.write(b"y" * 3)
    f.close()
    assert sorted(fileio.listdir(fileio.join(bucket, "ev"))) == [
        "events.out.tfevents.1.h", "events.out.tfevents.1.h.part0001"]
    assert fileio.read_bytes(fileio.join(bucket, "ev", "events.out.tfevents.1.h.part0001")) \
        == b"yyy"


def test_samples_written_into_a_bucket_replace_the_previous_ones(bucket):
    from lvt_jax import media, sample_mode
    out = fileio.join(bucket, "run", "samples")
    videos = np.random.default_rng(0).integers(0, 255, (2, 3, 8, 8, 3), dtype=np.uint8)
    for seed in (1, 2):
        sample_mode.write_outputs(out, videos, videos, np.zeros((2, 3, 2, 2, 4)),
                                  {"seed": seed}, fps=4.0)
    names = sorted(fileio.listdir(out))
    assert names == sorted(["grid.png", "samples.json", "samples.npz", "sample_0000.gif",
                            "sample_0000.mp4", "sample_0001.gif", "sample_0001.mp4"])
    assert fileio.listdir(fileio.join(bucket, "run")) == ["samples"]  # nothing left over
    info = fileio.read_json(fileio.join(out, "samples.json"))
    assert info["seed"] == 2 and info["files"] == sorted(n for n in names
                                                         if n != "samples.json")
    assert media.read_video(fileio.join(out, "sample_0001.mp4")).shape == (3, 8, 8, 3)
    with fileio.open(fileio.join(out, "samples.npz")) as f, np.load(f) as z:
        np.testing.assert_array_equal(z["videos"], videos)


def test_fvd_feature_cache_in_a_bucket(bucket):
    from lvt_jax.fvd.cache import cached_features
    calls = []

    def extract(clips):
        calls.append(len(clips))
        return clips.reshape(len(clips), -1)[:, :5].astype(np.float32)

    clips = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    d = fileio.join(bucket, "eval", "cache")
    a = cached_features(extract, clips, d, "sig")
    b = cached_features(extract, clips, d, "sig")
    assert calls == [2] and len(fileio.listdir(d)) == 1
    np.testing.assert_array_equal(a, b)


def test_code_shards_and_labels_in_a_bucket_are_whole(bucket):
    from array_record.python import array_record_data_source

    from lvt_jax.data import codes as codes_lib
    videos = [np.full((2, 4, 4, 4), i, np.int16) for i in range(3)]
    path = fileio.join(bucket, "codes", "train", codes_lib.shard_name(0, 1))
    codes_lib.write_shard(path, videos)
    codes_lib.write_labels(fileio.join(bucket, "codes", "train"), np.array([4, 5, 6]))
    with fileio.local_copy(path) as local:
        source = array_record_data_source.ArrayRecordDataSource([local])
        got = [codes_lib.deserialize(source[i]) for i in range(len(source))]
    for g, v in zip(got, videos):
        np.testing.assert_array_equal(g, v)
    with fileio.open(fileio.join(bucket, "codes", "train", "labels.npy")) as f:
        np.testing.assert_array_equal(np.load(f), [4, 5, 6])


# --------------------------------------------------------------------------- gs://


def test_data_dir_in_a_bucket_is_prepared_locally_and_uploaded(tmp_path, monkeypatch):
    from lvt_jax.data import pipeline, staging
    from tests.helpers import tiny_config
    monkeypatch.setenv("LVT_JAX_STAGING_DIR", str(tmp_path / "staging"))
    cfg = tiny_config("gs://bucket/tfds")
    with fake_gcs.registered():
        builder = pipeline._make_builder(cfg.data)
        assert not builder.is_prepared()
        prepared = pipeline._prepare(builder, cfg.data)
        assert prepared.is_prepared()
        assert {k: v.num_examples for k, v in prepared.info.splits.items()} == \
            {"train": 12, "test": 4}
        names = fileio.listdir(os.fspath(prepared.data_path))
        assert set(staging.MARKERS) <= set(names)
        assert any(n.startswith("synthetic_pushing-train.array_record") for n in names)
        assert os.listdir(tmp_path / "staging") == []  # the local copy is gone
        # a second process (or run) finds it prepared in the bucket and builds nothing
        again = pipeline._make_builder(cfg.data)
        assert again.is_prepared() and pipeline._prepare(again, cfg.data).is_prepared()


def _block_gcsfs(monkeypatch):
    """As if gcsfs were not installed (whether or not it is)."""
    for name in ("gs", "gcs"):
        monkeypatch.delitem(_registry, name, raising=False)
        monkeypatch.setitem(known_implementations, name, {
            "class": "lvt_jax_no_such_module.GCSFileSystem",
            "err": "Please install gcsfs to access Google Storage"})


def test_gs_without_its_package_is_refused_before_any_compile(tiny_data_dir, tmp_path,
                                                             monkeypatch):
    from lvt_jax import run
    from tests.helpers import CompileCounter, tiny_config
    _block_gcsfs(monkeypatch)
    cfg = tiny_config(tiny_data_dir)
    with CompileCounter() as compiled, pytest.raises(fileio.PathAccessError) as e:
        run.run(cfg, "gs://my-bucket/run", "train_vqvae")
    msg = str(e.value)
    assert "--workdir=gs://my-bucket/run" in msg and "gcsfs" in msg and "pip install" in msg
    assert compiled.names == []
    cfg.data.data_dir = "gs://my-bucket/tfds"
    with pytest.raises(fileio.PathAccessError, match=r"data\.data_dir=gs://my-bucket/tfds.*gcsfs"):
        run.run(cfg, str(tmp_path / "run"), "train_vqvae")
    assert not (tmp_path / "run").exists()


def test_gs_without_credentials_names_what_to_configure(tiny_data_dir):
    from lvt_jax import run
    from tests.helpers import CompileCounter, tiny_config
    cfg = tiny_config(tiny_data_dir)
    cfg.vqvae.init_from = "gs://their-bucket/run"
    with fake_gcs.registered(fake_gcs.DeniedGCS):
        with CompileCounter() as compiled, pytest.raises(fileio.PathAccessError) as e:
            run.run(cfg, "gs://my-bucket/run", "train_vqvae")
    msg = str(e.value)
    assert "--workdir=gs://my-bucket/run: cannot read it (PermissionError" in msg
    assert "vqvae.init_from=gs://their-bucket/run: cannot read it" in msg
    assert "gcloud auth application-default login" in msg and "service account" in msg
    assert compiled.names == []


def test_checkpoint_steps_in_a_bucket_count_only_committed_ones():
    """Orbax cannot rename a folder in GCS: it writes into the step folder and marks it
    complete with commit_success.txt last; an unmarked step is an unfinished save. (The
    orbax manager itself needs google-cloud-storage for gs://, so only the listing is
    checked here.)"""
    from lvt_jax.checkpoint import Checkpointer
    with fake_gcs.registered():
        root = "gs://bucket/run/vqvae/checkpoints"
        for step in (2, 4):
            fileio.write_bytes(fileio.join(root, str(step), "state", "_METADATA"), b"{}")
        fileio.write_bytes(fileio.join(root, "2", "commit_success.txt"), b"ok")
        fileio.write_bytes(fileio.join(root, "origin.json"), b"{}")
        ckpt = Checkpointer.__new__(Checkpointer)
        ckpt.directory = root
        assert ckpt.steps() == [2]
        assert not os.path.exists("gs:")  # no local folder named 'gs:'


def test_local_copy_of_a_folder_in_a_bucket_holds_everything_below_it(bucket):
    """For readers of local files only (torch for the reference release's netE/ netG/
    netC/ folders, video decoders for a prime video)."""
    for rel in ("netE/model_final.pth", "netG/model_final.pth", "netG/last_checkpoint"):
        fileio.write_text(fileio.join(bucket, "ref", rel), rel)
    with fileio.local_copy(fileio.join(bucket, "ref")) as local:
        found = sorted(os.path.relpath(os.path.join(d, n), local)
                       for d, _, names in os.walk(local) for n in names)
        assert found == ["netE/model_final.pth", "netG/last_checkpoint", "netG/model_final.pth"]
        assert open(os.path.join(local, "netG", "last_checkpoint")).read() == "netG/last_checkpoint"
    assert not os.path.exists(local)  # deleted after the block
    with fileio.local_copy(fileio.join(bucket, "ref", "netE", "model_final.pth")) as one:
        assert open(one).read() == "netE/model_final.pth"


def test_source_videos_in_a_bucket_are_refused_naming_the_alternative(tiny_data_dir):
    from lvt_jax import run
    from tests.helpers import tiny_config
    cfg = tiny_config(tiny_data_dir)
    cfg.data.kinetics.source_dir = "gs://b/kinetics"
    with pytest.raises(fileio.PathAccessError,
                       match=r"data\.kinetics\.source_dir=gs://b/kinetics: source videos .* "
                             r"local folder.*data\.data_dir=gs://"):
        run.run(cfg, None, "summary")
