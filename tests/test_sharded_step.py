"""One training step sharded over 8 (fake) devices equals the single-device step."""
import jax
import numpy as np
import pytest

from lvt_jax import sharding as shd
from lvt_jax import trainer
from lvt_jax.stages.vqvae import VQVAEStage
from tests.helpers import assert_trees_close, mesh_of, tiny_config


def _one_step(cfg, mesh):
    stage = VQVAEStage(cfg)
    bound = trainer.ShardedStage(stage, mesh, shd.rules_from_config(cfg))
    state = bound.init()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    batch = {"image": jax.device_put(images, shd.batch_sharding(mesh, 4, bound.rules))}
    state, metrics = bound.train_step(state, batch)
    return state, jax.device_get(metrics), bound


@pytest.mark.parametrize("data,fsdp,tensor", [(8, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_sharded_step_equals_single_device(tmp_path, data, fsdp, tensor):
    cfg = tiny_config(tmp_path)
    ref_state, ref_m, _ = _one_step(cfg, mesh_of(1))
    state, m, bound = _one_step(cfg, mesh_of(8, data, fsdp, tensor))
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    assert_trees_close(state.params, ref_state.params, atol=1e-5)
    assert_trees_close(state.extra, ref_state.extra, atol=1e-5)
    if fsdp > 1:  # parameters really are split across the fsdp axis
        k = state.params["encoder"]["conv2"]["kernel"]
        assert "fsdp" in str(k.sharding.spec)
        assert k.addressable_shards[0].data.shape[2] == k.shape[2] // fsdp
