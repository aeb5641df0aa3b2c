"""Device mesh and logical-axis sharding.

Model code names logical axes only ('batch', 'embed', 'conv_out', ...). The config's
`logical_axis_rules` maps them to the mesh axes ('data', 'fsdp', 'tensor'), so the same
model runs data-parallel, FSDP or tensor-parallel by configuration alone.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# One table for the whole project: layers never mention mesh axes.
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    # convolutions
    ("conv_in", "fsdp"),
    ("conv_out", "tensor"),
    ("kernel", None),
    ("kernel_t", None),
    ("kernel_h", None),
    ("kernel_w", None),
    # codebooks
    ("codebook", None),
    ("code", "tensor"),
    ("code_dim", None),
    # transformer
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("vocab", "tensor"),
    ("emb", None),
    ("norm", None),
    ("relpos", None),
    ("slices", None),
    ("classes", None),
    # HDR
    ("slot", None),      # the slots' learned initial states
    ("pos", None),       # coordinate inputs of position embeddings
    ("latent", None),    # latent vectors / maps (small)
    ("frames", None),    # the predictor's learned position embedding over frames
)


def make_mesh(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ('data', 'fsdp', 'tensor') mesh; one axis may be -1 (= the rest)."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(mesh_cfg[a]) for a in MESH_AXES]
    n = len(devices)
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1.")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n % known:
            raise ValueError(
                f"mesh {dict(zip(MESH_AXES, sizes))} does not divide the {n} available devices; "
                "set --config.mesh.* so that their product divides the device count.")
        sizes[sizes.index(-1)] = n // known
    if math.prod(sizes) != n:
        raise ValueError(
            f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices but {n} are "
            "available; set --config.mesh.data=-1 to use all of them.")
    # Auto axis types: GSPMD propagates shardings from the annotations we give.
    return Mesh(np.asarray(devices, dtype=object).reshape(sizes), MESH_AXES)


def rules_from_config(config: Any) -> tuple[tuple[str, Any], ...]:
    rules = config.get("logical_axis_rules", None)
    return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in rules) if rules else DEFAULT_RULES


def _fit_to_shape(spec: P, shape: Sequence[int], mesh: Mesh) -> P:
    """Drops mesh axes from dimensions they do not divide (e.g. a 3-channel RGB conv input)."""
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        if axes is None:
            out.append(None)
            continue
        names = (axes,) if isinstance(axes, str) else tuple(axes)
        kept = []
        for a in names:
            size = math.prod(mesh.shape[k] for k in kept + [a])
            if mesh.shape[a] > 1 and dim % size == 0:
                kept.append(a)
        out.append(None if not kept else (kept[0] if len(kept) == 1 else tuple(kept)))
    return P(*out)


def logical_to_sharding(abstract_tree: Any, mesh: Mesh, rules) -> Any:
    """NamedShardings for a (boxed, abstract) pytree from its logical axis annotations."""
    logical_specs = nn.get_partition_spec(abstract_tree)
    mesh_specs = nn.logical_to_mesh(logical_specs, rules)
    unboxed = nn.unbox(abstract_tree)

    def to_sharding(spec, leaf):
        spec = spec if isinstance(spec, P) else P()
        return NamedSharding(mesh, _fit_to_shape(spec, leaf.shape, mesh))

    return jax.tree.map(to_sharding, mesh_specs, unboxed,
                        is_leaf=lambda x: isinstance(x, P) or x is None)


def batch_sharding(mesh: Mesh, ndim: int, rules) -> NamedSharding:
    """Sharding of a batch whose leading dimension is 'batch'."""
    spec = nn.logical_to_mesh(P("batch", *([None] * (ndim - 1))), rules)
    return NamedSharding(mesh, spec)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fetch(tree: Any) -> Any:
    """Host numpy copies of (possibly multi-host, sharded) arrays, on every process."""
    from jax.experimental import multihost_utils

    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def check_batch_divides(name: str, batch: int, mesh: Mesh, rules) -> None:
    """Fails with the fix in the message unless `batch` splits over the data shards and
    the processes."""
    spec = batch_sharding(mesh, 1, rules).spec[0]
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    ways = 1
    for a in axes:
        ways *= mesh.shape[a]
    if batch % ways:
        raise ValueError(f"{name}={batch} is not divisible by the {ways} data-parallel devices "
                         f"(mesh {dict(mesh.shape)}); choose a multiple of {ways}.")
    if batch % jax.process_count():
        raise ValueError(f"{name}={batch} is not divisible by the {jax.process_count()} "
                         "processes; choose a multiple.")
