"""Shared test fixtures: tiny configs on a tiny synthetic dataset."""
import os

import flax.linen as nn
import jax
import numpy as np

from configs import demo


def tiny_config(data_dir: str, **train_overrides):
    c = demo.get_config("tiny")
    c.data.data_dir = str(data_dir)
    c.vqvae.train.update(**train_overrides)
    return c


def mesh_of(n: int, data: int | None = None, fsdp: int = 1, tensor: int = 1):
    from lvt_jax import sharding as shd
    data = n // (fsdp * tensor) if data is None else data
    return shd.make_mesh(dict(data=data, fsdp=fsdp, tensor=tensor), jax.devices()[:n])


def flat(tree) -> dict:
    leaves = jax.tree_util.tree_flatten_with_path(nn.unbox(jax.device_get(tree)))[0]
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves}


def assert_trees_close(a, b, atol=1e-5, rtol=1e-5):
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], atol=atol, rtol=rtol, err_msg=k)


SHARED_DATA = os.environ.get("LVT_TEST_DATA_DIR")


class CompileCounter:
    """Counts XLA compilations while active (`with CompileCounter() as c: ...; c.names`).

    The behaviour behind "fails before any compile": a bad setting must raise before JAX
    compiles anything, whatever the machine's speed."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.names: list[str] = []

    def _listener(self, event, duration_secs, **kwargs):
        if event == self.EVENT:
            self.names.append(str(kwargs.get("fun_name", "?")))

    def __enter__(self) -> "CompileCounter":
        jax.monitoring.register_event_duration_secs_listener(self._listener)
        return self

    def __exit__(self, *exc) -> None:
        jax.monitoring.unregister_event_duration_listener(self._listener)
