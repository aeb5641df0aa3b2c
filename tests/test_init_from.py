"""Fine-tuning (`<stage>.init_from`): a stage starts from another run's (or the reference
release's) weights at step 0 with a fresh optimiser, records it, and later resumes itself.

The sources are the session's tiny trained workdir (`pipeline_run`, read only) and a
random reference-release VQ-VAE written as .npz files.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from lvt_jax import init_from, trainer, validate
from lvt_jax.stages.transformer import TransformerStage
from lvt_jax.stages.vqvae import VQVAEStage
from tests.helpers import flat, mesh_of, tiny_config


def first_train_loss(monkeypatch) -> list:
    """Records the loss of every train step the trainer runs (in order)."""
    losses = []
    real = trainer.ShardedStage.train_step

    def recording(self, state, batch):
        state, metrics = real(self, state, batch)
        losses.append(float(metrics["loss"]))
        return state, metrics

    monkeypatch.setattr(trainer.ShardedStage, "train_step", recording)
    return losses


def first_batch(stage, mesh):
    it = stage.make_iterator("train", mesh, train=True)
    try:
        return next(it)
    finally:
        it.close()


def test_vqvae_starts_from_the_source_weights_then_resumes_its_own(pipeline_run, tmp_path,
                                                                   monkeypatch):
    src_cfg, src = pipeline_run
    mesh = mesh_of(8)
    cfg = tiny_config(src_cfg.data.data_dir, num_steps=1, checkpoint_every=1, log_every=1)
    cfg.vqvae.init_from = src
    work = str(tmp_path / "ft")
    stage = VQVAEStage(cfg)
    source, source_step = trainer.restore_state(stage, mesh, src)
    # The source's loss on the fine-tuning run's first batch (train-mode forward, as in
    # a step): what the first step must report if it starts from exactly those weights.
    images = first_batch(stage, mesh)["image"]
    want, _ = jax.jit(stage.loss)(source.params, source.extra, images)

    losses = first_train_loss(monkeypatch)
    state, _ = trainer.train(stage, work, mesh, init=init_from.initializer(stage, work))
    assert losses[0] == pytest.approx(float(want), rel=1e-5)
    assert int(state.step) == 1
    assert int(state.opt_state[0].count) == 1  # a fresh Adam state (the source's has more)
    assert int(source.opt_state[0].count) == source_step > 1
    origin = init_from.read_origin(work, stage)
    assert origin["init_from"] == src and origin["source"]["kind"] == "checkpoint"
    assert origin["source"]["step"] == source_step
    assert origin["source"]["path"] == os.path.join(src, "vqvae", "checkpoints",
                                                    str(source_step))
    assert origin["model"]["hidden"] == cfg.vqvae.model.hidden

    # Rerun with more steps and init_from still set: it resumes its own step-1 checkpoint.
    def no_source(*args, **kwargs):
        raise AssertionError("a resumed fine-tuning run must not read its source again")

    monkeypatch.setattr(init_from, "load_source", no_source)
    saved, _ = trainer.restore_state(stage, mesh, work)
    cfg.vqvae.train.num_steps = 2
    losses.clear()
    state2, _ = trainer.train(stage, work, mesh, init=init_from.initializer(stage, work))
    assert int(state2.step) == 2 and len(losses) == 1
    assert int(state2.opt_state[0].count) == 2  # continued the fine-tuning's optimiser
    assert init_from.read_origin(work, stage) == origin  # the record of its start is kept
    moved = [k for k, v in flat(state2.params).items() if not np.array_equal(
        v, flat(saved.params)[k])]
    assert moved  # it trained on from its own step 1


def test_transformer_starts_from_the_source_weights(pipeline_run, tmp_path):
    """Stage 2 (no non-gradient variables) from a stage folder; the trainer path itself is
    covered by the VQ-VAE test above, so here the initializer and one step directly."""
    src_cfg, src = pipeline_run
    mesh = mesh_of(8)
    cfg = tiny_config(src_cfg.data.data_dir)
    cfg.transformer.init_from = os.path.join(src, "transformer")  # a stage folder works too
    cfg.transformer.codes_dir = os.path.join(src, "codes")
    work = str(tmp_path / "ft")
    stage = TransformerStage(cfg, work)
    source, source_step = trainer.restore_state(stage, mesh, src)
    batch = first_batch(stage, mesh)
    # Step 0's slices: the trainer's RNG is the config seed's, for source and fine-tuning.
    rng = jax.random.fold_in(jax.random.wrap_key_data(source.rng), 0)
    slices = stage.sample_slices(rng, batch["codes"].shape[0])
    want, _ = jax.jit(stage.slice_loss)(source.params, stage._clip(batch), slices)

    bound = trainer.ShardedStage(stage, mesh, _rules(cfg))
    state = init_from.initializer(stage, work)(bound)
    assert int(state.step) == 0 and state.extra == {}
    assert all(float(np.abs(x).max()) == 0 for x in jax.tree.leaves(state.opt_state))
    _, metrics = bound.train_step(state, batch)
    assert float(metrics["loss"]) == pytest.approx(float(want), rel=1e-5)
    origin = init_from.read_origin(work, stage)
    assert origin["source"]["step"] == source_step and origin["source"]["model"] is not None


def test_model_mismatch_names_the_parameter_and_the_field(pipeline_run):
    src_cfg, src = pipeline_run
    cfg = tiny_config(src_cfg.data.data_dir)
    cfg.vqvae.model.update(hidden=24, num_res_blocks=2)
    stage = VQVAEStage(cfg)
    bound = trainer.ShardedStage(stage, mesh_of(1), _rules(cfg))
    cfg.vqvae.init_from = src
    with pytest.raises(init_from.InitFromError) as err:
        init_from.initializer(stage, "/nonexistent-unused")(bound)
    msg = str(err.value)
    assert "vqvae.init_from" in msg
    assert "params/encoder/conv1/kernel: this run (4, 4, 3, 24), source (4, 4, 3, 16)" in msg
    assert "not in the source" in msg  # the second residual block's parameters
    # From the source's recorded settings: the exact fields and values to set.
    assert "--config.vqvae.model.hidden=16" in msg
    assert "--config.vqvae.model.num_res_blocks=1" in msg


def _rules(cfg):
    from lvt_jax import sharding as shd
    return shd.rules_from_config(cfg)


def test_mismatch_without_recorded_settings_guesses_the_field():
    cfg = tiny_config("/unused")
    stage = VQVAEStage(cfg)
    abstract = trainer.ShardedStage(stage, mesh_of(1), _rules(cfg)).abstract
    params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract.params)
    extra = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract.extra)
    kernel = params["encoder"]["conv1"]["kernel"]
    params["encoder"]["conv1"]["kernel"] = np.zeros(kernel.shape[:3] + (13,), kernel.dtype)
    with pytest.raises(init_from.InitFromError) as err:
        init_from.match_variables(abstract, params, extra, "vqvae", cfg.vqvae.model)
    msg = str(err.value)
    assert "params/encoder/conv1/kernel: this run (4, 4, 3, 16), source (4, 4, 3, 13)" in msg
    assert "vqvae.model.hidden=16" in msg  # guessed: the setting whose value is that size
    extra["vq"]["quantizer"]["codebook"][0, 0] = np.nan
    params["encoder"]["conv1"]["kernel"] = kernel
    with pytest.raises(init_from.InitFromError, match="non-finite values"):
        init_from.match_variables(abstract, params, extra, "vqvae", cfg.vqvae.model)


def test_fine_tune_from_a_reference_release_vqvae(tmp_path):
    from lvt_jax.tools import reference_mapping as rm
    from tests.test_import_reference import _write_npz, random_vqvae_state
    cfg = tiny_config("/unused")
    mc = cfg.vqvae.model
    e, g, c = random_vqvae_state(mc, seed=3)
    files = ",".join(_write_npz(tmp_path / f"{n}.npz", sd, 99)
                     for n, sd in (("netE", e), ("netG", g), ("netC", c)))
    cfg.vqvae.init_from = files
    stage = VQVAEStage(cfg)
    bound = trainer.ShardedStage(stage, mesh_of(8), _rules(cfg))
    state = init_from.initializer(stage, str(tmp_path / "w"))(bound)
    n = cfg.vqvae.train.batch_size * (cfg.data.image_size // 4) ** 2
    params, vq = rm.vqvae_from_reference(e, g, c, mc, samples_per_update=n)
    for got, want in ((state.params, params), (state.extra["vq"], vq)):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), got, want)
    assert int(state.step) == 0 and int(state.opt_state[0].count) == 0
    assert state.params["encoder"]["conv1"]["kernel"].sharding == \
        bound.shardings.params["encoder"]["conv1"]["kernel"]
    origin = json.load(open(tmp_path / "w" / "vqvae" / "checkpoints" / "origin.json"))
    assert origin["source"]["kind"] == "reference" and origin["source"]["step"] == 100


def test_missing_source_fails_before_anything_runs(tmp_path):
    cfg = tiny_config(tmp_path)
    cfg.transformer.init_from = str(tmp_path / "nowhere")
    with pytest.raises(init_from.InitFromError, match="transformer.init_from=.*does not exist"):
        validate.pipeline(cfg, mesh_of(8))
    cfg.transformer.init_from = None
    cfg.transformer.train.num_steps = 0
    with pytest.raises(ValueError, match="0 only with transformer.init_from"):
        validate.pipeline(cfg, mesh_of(8))
    (tmp_path / "run" / "transformer").mkdir(parents=True)  # a workdir without checkpoints
    cfg.transformer.init_from = str(tmp_path / "run")
    validate.pipeline(cfg, mesh_of(8))  # 0 steps: the source taken as it is
    with pytest.raises(init_from.InitFromError, match="holds no finished checkpoint"):
        init_from.load_source(cfg, "transformer", cfg.transformer.init_from)


def test_zero_steps_keeps_the_source_stage1_as_it_is(pipeline_run, tmp_path, caplog):
    """num_steps=0 with init_from: the source's stage 1 unchanged, evaluated on this data;
    a stage 2 fine-tuned on top of a stage 1 from scratch is warned about."""
    import logging
    src_cfg, src = pipeline_run
    mesh = mesh_of(8)
    cfg = tiny_config(src_cfg.data.data_dir, num_steps=0)
    cfg.vqvae.init_from = os.path.join(src, "vqvae", "checkpoints")
    work = str(tmp_path / "keep")
    stage = VQVAEStage(cfg)
    state, results = trainer.train(stage, work, mesh, init=init_from.initializer(stage, work))
    source, _ = trainer.restore_state(stage, mesh, src)
    saved, step = trainer.restore_state(stage, mesh, work)
    assert step == 0 and results["step"] == 0
    for got in (state, saved):
        for a, b in ((got.params, source.params), (got.extra, source.extra)):
            fa, fb = flat(a), flat(b)
            assert fa.keys() == fb.keys()
            assert all(np.array_equal(fa[k], fb[k]) for k in fa)

    cfg.transformer.init_from = src
    stage2 = TransformerStage(cfg, work)
    with caplog.at_level(logging.INFO, logger="lvt_jax.init_from"):
        init_from.stage1_note(cfg, work, stage, stage2)
    assert "stage 1 started from" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lvt_jax.init_from"):
        init_from.stage1_note(cfg, src, stage, stage2)  # src's stage 1: from scratch
    assert "little of it transfers" in caplog.text
