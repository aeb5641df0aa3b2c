"""Stage 2's training objective: slice sampling, priming mask, sharded step equivalence."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bair
from lvt_jax import sharding as shd
from lvt_jax import trainer
from lvt_jax.models.lvt import subscale
from lvt_jax.stages import transformer as ts
from tests.helpers import assert_trees_close, mesh_of, tiny_config


def test_dsfvt_never_samples_a_priming_slice():
    stage = ts.TransformerStage(bair.get_config())  # paper DSFVT: stride (16, 1, 1)
    assert stage.stride == (16, 1, 1) and stage.n_prime == 1
    np.testing.assert_array_equal(stage.slices, np.arange(1, 16))
    draws = np.concatenate([np.asarray(stage.sample_slices(jax.random.key(k), 512))
                            for k in range(4)])
    assert draws.min() == 1 and draws.max() == 15
    assert set(draws.tolist()) == set(range(1, 16))  # uniform over [1, 15]: all appear
    # every position of a drawn DSFVT slice counts
    w = ts.frame_weights(jnp.asarray(stage.slices), stage.clip_shape, stage.stride, 1)
    assert np.all(np.asarray(w) == 1)
    # priming more frames moves the range up
    assert ts.trainable_slices((16, 16, 16), (16, 1, 1), 5).tolist() == list(range(5, 16))


class _FixedLogits:
    """Stands in for the model: returns given logits, so the loss is checked by hand."""

    def __init__(self, logits):
        self.logits = logits

    def apply(self, variables, codes, slice_idx):
        return self.logits


def test_dstsvt_loss_excludes_priming_positions():
    stage = ts.TransformerStage(bair.get_config("dstsvt"))  # stride (4, 2, 2): 16 slices
    assert stage.stride == (4, 2, 2)
    np.testing.assert_array_equal(stage.slices, np.arange(16))  # every slice has t >= 1
    rng = np.random.default_rng(0)
    B, (t, h, w), nc, nv = 4, stage.slice_shape, 4, 512
    codes = jnp.asarray(rng.integers(0, nv, (B, 16, 16, 16, nc)), jnp.int32)
    slice_idx = jnp.array([0, 3, 4, 15], jnp.int32)  # slices 0..3 hold frames 0, 4, 8, 12
    logits = jnp.asarray(rng.normal(size=(B, t, h, w, nc, nv)), jnp.float32)
    stage.model = _FixedLogits(logits)
    loss, metrics = stage.slice_loss(None, codes, slice_idx)

    targets = np.asarray(subscale.get_slice(codes, stage.stride, slice_idx))
    lp = np.asarray(jax.nn.log_softmax(logits))
    nll = -np.take_along_axis(lp, targets[..., None], -1)[..., 0].mean(-1)  # [B, t, h, w]
    keep = np.ones((B, t, 1, 1), bool)
    keep[:2, 0] = False  # slices 0 and 3 (time offset a = 0): their first row is frame 0
    keep = np.broadcast_to(keep, nll.shape)
    np.testing.assert_allclose(loss, nll[keep].mean(), rtol=1e-5)
    np.testing.assert_allclose(metrics["bits_per_code"], nll[keep].mean() / np.log(2),
                               rtol=1e-5)
    assert not np.isclose(loss, nll.mean())  # the mask matters for this draw
    assert stage.counted_positions_per_clip() == 240  # 256 * (12 + 4 * 3/4) / 16


def _random_state(stage):
    """A TrainState with random parameters, without compiling the (slow) real init."""
    abstract = nn.unbox(jax.eval_shape(stage.init, jax.random.key_data(jax.random.key(0))))
    leaves, tree = jax.tree_util.tree_flatten_with_path(abstract.params)
    rng = np.random.default_rng(1)
    values = []
    for path, leaf in leaves:
        v = rng.normal(size=leaf.shape).astype(np.float32)
        if "scale" in jax.tree_util.keystr(path):
            v = 1.0 + 0.1 * v
        values.append(v / np.sqrt(leaf.shape[-2]) if leaf.ndim >= 2 else 0.1 * v)
    params = jax.tree_util.tree_unflatten(tree, values)
    return abstract.replace(step=np.int32(0), params=params, opt_state=stage.tx.init(params),
                            rng=np.asarray(jax.random.key_data(jax.random.key(0))))


def test_sharded_step_equals_single_device(tmp_path):
    """data=4 x tensor=2 on 8 devices: same loss and parameters as one device."""
    cfg = tiny_config(tmp_path)
    # RMSProp's first update is lr * g / (0.22 |g| + eps): with eps = 1e-8 it is ~lr * sign(g),
    # so reduction-order noise in a near-zero gradient flips a whole update. A larger eps
    # keeps the update Lipschitz in g (the same optimizer, well conditioned for comparison).
    cfg.transformer.train.update(learning_rate=1e-3, eps=1e-3)
    stage = ts.TransformerStage(cfg)
    m = cfg.transformer.model
    rng = np.random.default_rng(0)
    codes = rng.integers(0, m.vocab_size, (8, *m.clip_shape, m.num_codebooks)).astype(np.int16)
    state0 = jax.device_get(_random_state(stage))
    results = []
    for mesh in (mesh_of(1), mesh_of(8, data=4, tensor=2)):
        bound = trainer.ShardedStage(stage, mesh, shd.rules_from_config(cfg))
        state = jax.device_put(state0, bound.shardings)
        batch = {"codes": jax.device_put(codes, shd.batch_sharding(mesh, 5, bound.rules))}
        state, metrics = bound.train_step(state, batch)
        results.append((state, jax.device_get(metrics)))
    (ref, ref_m), (got, got_m) = results
    np.testing.assert_allclose(got_m["loss"], ref_m["loss"], rtol=1e-5)
    assert np.isfinite(ref_m["loss"]) and int(got.step) == 1
    assert_trees_close(got.params, ref.params, atol=1e-5)
    # the step did move the parameters (the comparison is not vacuous)
    moved = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), state0.params,
                         jax.device_get(ref.params))
    assert max(jax.tree.leaves(moved)) > 1e-5
    # weights really are split over 'tensor': attention heads and the vocabulary
    layer = got.params["decoder"]["attention"]
    layer = layer["layers"]["layer"] if "layers" in layer else layer["layer_0"]
    q = layer["query"]  # [(layers,) d, heads, da]
    assert "tensor" in str(q.sharding.spec)
    assert q.addressable_shards[0].data.shape[-2] == q.shape[-2] // 2
    emb = got.params["decoder"]["code_embedding"]  # [nc, nv, de]
    assert emb.addressable_shards[0].data.shape[1] == emb.shape[1] // 2
