"""Optional class conditioning of stage 2 (the release's CLASS_NUM), and the labels that
travel from a labelled dataset through the encoded codes into training batches.

Faithfulness to the reference layout is tested against a numpy port of the release in
test_import_reference.py; here: behaviour, defaults and the data path.
"""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import kinetics600
from lvt_jax import encode
from lvt_jax.data import codes as codes_lib
from lvt_jax.data import pipeline
from lvt_jax.models.lvt import subscale
from lvt_jax.models.lvt import transformer as tr
from lvt_jax.stages.transformer import TransformerStage
from lvt_jax.train_state import TrainState


def tiny(num_classes: int):
    c = tr.default_transformer_config("dsfvt_tiny")
    c.update(num_classes=num_classes, block_shape=(1, 2, 2))
    return c


def random_codes(c, batch, seed=1):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.integers(0, c.vocab_size, (batch, *c.clip_shape, c.num_codebooks)),
                       jnp.int32)


def kinetics_tiny():
    """configs/kinetics600.py:classes,tiny (2 classes) with one layer per stack: fast."""
    cfg = kinetics600.get_config("classes,tiny")
    cfg.transformer.model.update(enc_layers=1, dec_layers=1)
    return cfg


def random_variables(model, seed: int = 0):
    """Variables of the model's shapes filled from numpy (no init compile: tests stay fast)."""
    shapes = nn.unbox(jax.eval_shape(lambda r: tr.init_variables(model, r), jax.random.key(0)))
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0.0, 0.3, x.shape), x.dtype), shapes)


@pytest.fixture(scope="module")
def conditional():
    """The 2-class tiny model, random variables and a jitted apply (one compile per shape)."""
    c = kinetics_tiny().transformer.model
    model = tr.build_model(c)
    return c, model, random_variables(model), jax.jit(model.apply)


def test_off_by_default_with_the_unconditional_tree():
    for variant in ("dsfvt", "dstsvt", "tiny"):
        assert tr.default_transformer_config(variant).num_classes == 0
    c = tiny(0)
    shapes = jax.eval_shape(lambda r: tr.init_variables(tr.build_model(c), r), jax.random.key(0))
    enc = nn.unbox(shapes)["params"]["encoder"]
    assert "class_embedding" not in enc and enc["proj"].shape == (c.emb_dim, c.d_model)
    cond = nn.unbox(jax.eval_shape(lambda r: tr.init_variables(tr.build_model(tiny(3)), r),
                                   jax.random.key(0)))["params"]
    assert cond["encoder"]["class_embedding"].shape == (3, c.emb_dim)
    assert cond["encoder"]["proj"].shape == (2 * c.emb_dim, c.d_model)
    extra = tr.count_params(cond)["total"] - tr.count_params(shapes)["total"]
    assert extra == 3 * c.emb_dim + c.emb_dim * c.d_model


def test_the_class_steers_each_clip_and_is_required(conditional):
    c, model, variables, apply = conditional
    codes = random_codes(c, 2)
    idx = jnp.array([2, 3], jnp.int32)
    a = np.asarray(apply(variables, codes, idx, jnp.array([0, 1], jnp.int32)))
    b = np.asarray(apply(variables, codes, idx, jnp.array([1, 1], jnp.int32)))
    assert np.abs(a[0] - b[0]).max() > 1e-3  # clip 0's class changed: its logits change
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)  # clip 1's did not: no cross-talk
    again = np.asarray(apply(variables, codes, idx, jnp.array([0, 1], jnp.int32)))
    np.testing.assert_array_equal(a, again)
    with pytest.raises(ValueError, match="class-conditional"):
        jax.eval_shape(functools.partial(model.apply, variables), codes, idx)


def test_unconditional_model_ignores_labels():
    """Same computation with or without labels: the traced programs are identical."""
    model = tr.build_model(tiny(0))
    c = model.config
    variables = jax.eval_shape(lambda r: tr.init_variables(model, r), jax.random.key(0))
    codes, idx = random_codes(c, 2), jnp.array([1, 2], jnp.int32)
    plain = jax.make_jaxpr(model.apply)(variables, codes, idx)
    labelled = jax.make_jaxpr(lambda *a: model.apply(*a, jnp.array([5, 7])))(variables, codes,
                                                                             idx)
    assert str(plain.jaxpr.eqns) == str(labelled.jaxpr.eqns)


def test_clip_logits_and_encode_context_take_the_labels(conditional):
    c, model, variables, apply = conditional
    codes = random_codes(c, 2)
    labels = jnp.array([1, 0], jnp.int32)
    full = jax.jit(functools.partial(model.apply, method="clip_logits"))(variables, codes, labels)
    for s in range(subscale.num_slices(c.stride)):
        idx = jnp.full((2,), s, jnp.int32)
        got = subscale.get_slice(full, c.stride, idx)
        np.testing.assert_allclose(got, apply(variables, codes, idx, labels), atol=1e-5,
                                   err_msg=f"slice {s}")
    enc = jax.jit(functools.partial(model.apply, method="encode_context"))
    idx = jnp.array([1, 1], jnp.int32)
    diff = enc(variables, codes, idx, labels) - enc(variables, codes, idx, labels[::-1])
    assert np.abs(np.asarray(diff)).max() > 1e-3


class _FakeEncoder:
    """Stands in for the VQ-VAE: frame [64, 64, 3] -> codes [16, 16, 4] = pixel // 16."""

    code_shape = (16, 16, 4)

    def encode_videos(self, videos):
        return [np.repeat((np.asarray(v)[:, ::4, ::4, :1] // 16).astype(np.int16), 4, -1)
                for v in videos]


@pytest.fixture(scope="module")
def labelled_codes(tmp_path_factory):
    """A labelled 'kinetics' split of 6 videos of 4..7 frames, encoded with labels."""
    cfg = kinetics600.get_config("classes,tiny")  # 2 classes, 4-frame clips
    rng = np.random.default_rng(0)
    lengths, labels = np.array([4, 7, 5, 6, 4, 5]), np.array([1, 0, 1, 1, 0, 0], np.int32)
    items = [{"video": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)} for n in lengths]
    videos = pipeline.VideoSource(items, num_frames=lengths, labels=labels)
    directory = str(tmp_path_factory.mktemp("codes") / "train")
    spec = encode.split_spec(cfg, "train", len(videos), videos.video_shape, vqvae_step=0)
    encode.encode_split(_FakeEncoder(), videos, directory, spec, codebook_size=32)
    return cfg, directory, labels, lengths


def test_encode_stores_labels_and_true_lengths(labelled_codes):
    _, directory, labels, lengths = labelled_codes
    source = codes_lib.CodeSource(directory)
    np.testing.assert_array_equal(source.labels, labels)
    assert source.metadata["labels"] == codes_lib.LABELS_FILE
    assert (source.metadata["min_frames"], source.metadata["max_frames"]) == (4, 7)
    assert [source[i].shape[0] for i in range(len(source))] == lengths.tolist()


def test_batches_carry_the_labels_only_when_conditioning(labelled_codes):
    _, directory, labels, _ = labelled_codes
    it = codes_lib.make_code_iterator(directory, 4, 6, None, seed=3, train=True, num_classes=2)
    batch = next(it)
    order = [pipeline.shuffled_item(3, g, 6) for g in range(6)]
    np.testing.assert_array_equal(batch["label"], labels[order])
    assert batch["label"].dtype == np.int32
    plain = next(codes_lib.make_code_iterator(directory, 4, 6, None, seed=3, train=True))
    assert set(plain) == {"codes"}
    with pytest.raises(ValueError, match=r"outside \[0, 1\)"):
        codes_lib.make_code_iterator(directory, 4, 6, None, seed=3, train=True, num_classes=1)


def test_conditional_stage_learns_a_class_embedding_per_seen_class(labelled_codes, conditional):
    _, directory, _, _ = labelled_codes
    stage = TransformerStage(kinetics_tiny())
    params = conditional[2]["params"]  # the same model: no second init compile
    key = jax.random.key_data(jax.random.key(0))
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=stage.tx.init(params), extra={}, rng=key)
    it = codes_lib.make_code_iterator(directory, 4, 4, None, seed=1, train=True, num_classes=2)
    codes = next(it)["codes"]
    it.close()
    batch = {"codes": codes, "label": np.zeros((4,), np.int32)}  # class 0 only
    new, metrics = jax.jit(stage.train_step)(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    before = np.asarray(state.params["encoder"]["class_embedding"])
    after = np.asarray(new.params["encoder"]["class_embedding"])
    assert np.abs(after[0] - before[0]).max() > 0  # the class in the batch learns
    np.testing.assert_array_equal(after[1], before[1])  # an absent class gets no gradient
