"""Workarounds for XLA bugs, each pinned by the smallest program that shows it.

XLA's SPMD partitioner (jax 0.10.2 on CPU, both Shardy and GSPMD) miscomputes a GRU cell
(two dense layers whose [.., 3F] outputs, sharded over the tensor axis, are split into
gates and recombined) followed by an MLP on a (data, fsdp, tensor) = (2, 2, 2) mesh:
outputs off by O(1), while (8, 1, 1), (4, 2, 1), (4, 1, 2), (1, 2, 2) are exact.
`slot_attention.GRU` gathers the gates over the tensor axis first; HDR's sharded-step
test (tests/test_hdr_stage.py) found it.
"""
import flax.linen as nn
import jax
import numpy as np

from lvt_jax import sharding as shd
from lvt_jax.models.hdr.nets import MLP, layer_norm
from lvt_jax.models.hdr.slot_attention import GRU
from tests.helpers import mesh_of


class _SlotUpdate(nn.Module):
    """Slot attention's update: GRU, then a residual MLP."""

    @nn.compact
    def __call__(self, updates, slots):
        slots = GRU(16)(updates, slots)
        return slots + MLP(32, 16)(layer_norm()(slots))


def _run(mesh, updates, slots):
    rules = shd.DEFAULT_RULES
    model = _SlotUpdate()
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        init = lambda: model.init(jax.random.key(0), updates, slots)
        shardings = nn.logical_to_mesh_sharding(
            nn.get_partition_spec(jax.eval_shape(init)), mesh, rules)
        params = jax.jit(init, out_shardings=shardings)()
        batch = shd.batch_sharding(mesh, 3, rules)
        out = jax.jit(model.apply)(params, jax.device_put(updates, batch),
                                   jax.device_put(slots, batch))
        return np.asarray(out)


def test_slot_update_on_a_2x2x2_mesh_equals_one_device():
    rng = np.random.default_rng(0)
    updates, slots = (rng.normal(size=(8, 3, 16)).astype(np.float32) for _ in range(2))
    ref = _run(mesh_of(1), updates, slots)
    np.testing.assert_allclose(_run(mesh_of(8, 2, 2, 2), updates, slots), ref, atol=1e-5)
