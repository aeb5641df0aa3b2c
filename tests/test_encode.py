"""--mode=all on the tiny demo (stage 1, encode, stage 2) and the code dataset it writes.

The pipeline runs once per session (conftest.pipeline_run); these tests read its workdir.
"""
import json
import math
import os

import jax
import numpy as np
import pytest

from lvt_jax import encode, run, trainer
from lvt_jax.data import codes as codes_lib
from lvt_jax.data import pipeline
from lvt_jax.stages.vqvae import VQVAEStage, to_model_input
from tests.helpers import mesh_of, tiny_config


def test_mode_all_trains_both_stages(pipeline_run):
    cfg, workdir = pipeline_run
    vq = json.load(open(os.path.join(workdir, "vqvae", "eval.json")))
    assert vq["step"] == cfg.vqvae.train.num_steps
    tr = json.load(open(os.path.join(workdir, "transformer", "eval.json")))
    assert tr["step"] == cfg.transformer.train.num_steps
    assert tr["num_clips"] == 4  # the whole test split, first clip_length frames each
    # priming frame 0 excluded: clips x (T - 1) frames x 16 x 16 positions
    assert tr["num_positions"] == 4 * (cfg.data.clip_length - 1) * 16 * 16
    assert 0.0 < tr["bits_per_code"] < math.log2(cfg.transformer.model.vocab_size)
    assert tr["bits_per_code"] == pytest.approx(tr["nats_per_code"] / math.log(2))


def test_codes_equal_vqvae_encode_of_the_frames(pipeline_run):
    cfg, workdir = pipeline_run
    stage = VQVAEStage(cfg)
    state, _ = trainer.restore_state(stage, mesh_of(1), workdir)
    variables = {"params": state.params, **state.extra}
    enc = jax.jit(lambda v, x: stage.model.apply(v, to_model_input(x), method="encode"))
    for split, items in (("test", range(4)), ("train", (0, 5, 11))):
        videos = pipeline.load_videos(cfg.data, split)
        source = codes_lib.CodeSource(codes_lib.split_dir(workdir, split))
        assert len(source) == len(videos)
        assert source.metadata["frame_shape"] == [16, 16, 4]
        for i in items:
            got = source[i]
            assert got.dtype == np.int16 and got.shape == (30, 16, 16, 4)
            np.testing.assert_array_equal(got, np.asarray(enc(variables, videos[i])))


def _stat(path):
    s = os.stat(path)
    return s.st_ino, s.st_mtime_ns


def test_interrupted_encode_resumes_without_redoing_finished_shards(pipeline_run):
    cfg, workdir = pipeline_run
    d = codes_lib.split_dir(workdir, "train")
    before = [codes_lib.CodeSource(d)[i] for i in range(12)]
    shards = sorted(f for f in os.listdir(d) if f.endswith(".array_record"))
    assert shards == [codes_lib.shard_name(s, 3) for s in range(3)]  # 12 videos, 4 per shard
    kept = {s: _stat(os.path.join(d, s)) for s in (shards[0], shards[2])}
    # An interruption mid-shard: shard 1 never renamed (a partial temp file instead) and
    # metadata.json not yet written.
    os.remove(os.path.join(d, shards[1]))
    with open(os.path.join(d, shards[1] + ".tmp-4242"), "wb") as f:
        f.write(b"partial")
    os.remove(os.path.join(d, "metadata.json"))
    with pytest.raises(FileNotFoundError, match="run --mode=encode"):
        codes_lib.CodeSource(d)

    out = encode.run(cfg, workdir)
    assert out["train"] == {"encoded": [1], "skipped": [0, 2]}
    assert out["test"]["encoded"] == []  # complete splits are left alone
    assert {s: _stat(os.path.join(d, s)) for s in kept} == kept  # finished shards untouched
    assert not [f for f in os.listdir(d) if ".tmp-" in f]
    after = codes_lib.CodeSource(d)
    for i in range(12):
        np.testing.assert_array_equal(after[i], before[i])


def test_encode_refuses_codes_of_another_stage1_checkpoint(pipeline_run):
    cfg, workdir = pipeline_run
    d = codes_lib.split_dir(workdir, "test")
    spec = json.load(open(os.path.join(d, "spec.json")))
    with pytest.raises(ValueError, match=r"different inputs.*vqvae_step.*Delete"):
        encode._check_spec(d, dict(spec, vqvae_step=spec["vqvae_step"] + 1))
    encode._check_spec(d, spec)  # the same inputs are fine


def test_code_iterator_windows(pipeline_run):
    cfg, workdir = pipeline_run
    L = cfg.data.clip_length
    train_dir = codes_lib.split_dir(workdir, "train")
    source = codes_lib.CodeSource(train_dir)
    it = codes_lib.make_code_iterator(train_dir, L, 4, None, seed=0, train=True)
    batch = next(it)
    assert batch["codes"].shape == (4, L, 16, 16, 4) and batch["codes"].dtype == np.int16
    windows = [source[v][s:s + L] for v in range(len(source)) for s in range(30 - L + 1)]
    for clip in batch["codes"]:  # each row is some window of some video
        assert any(np.array_equal(clip, w) for w in windows)
    # eval: every test video once, its first L frames
    test_dir = codes_lib.split_dir(workdir, "test")
    ev = next(codes_lib.make_code_iterator(test_dir, L, 8, None, seed=0, train=False))
    test = codes_lib.CodeSource(test_dir)
    np.testing.assert_array_equal(ev["mask"], [1] * 4 + [0] * 4)
    for i in range(4):
        np.testing.assert_array_equal(ev["codes"][i], test[i][:L])
    with pytest.raises(ValueError, match="longer than the shortest"):
        codes_lib.make_code_iterator(test_dir, 31, 8, None, seed=0, train=False)
