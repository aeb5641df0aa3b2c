"""XLA compiler options for the project's jitted steps, chosen per platform.

XLA:CPU hands dots, reductions and convolutions to YNNPACK by default. Its convolutions
(and above all their gradients) ran at 0.3-0.7x of the 2048^2 matmul rate in the VQ-VAE's
training step, XLA's own (Eigen) convolutions at 0.7-1.0x: the paper-size stage-1 step
takes 1.65x less time with YNNPACK kept for dots and reductions only (docs/benchmarks.md,
stage 1). Programs without convolutions compile exactly as with the defaults.
"""
from __future__ import annotations

from typing import Iterable

import jax

# XLA:CPU's default YNNPACK fusion types minus LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION
# (the same program as XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution).
CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type":
               "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


def for_devices(devices: Iterable[jax.Device] | None = None) -> dict | None:
    """`compiler_options` for `jax.jit` of a program on `devices` (default: all); None
    (XLA's defaults) on accelerators."""
    platforms = {d.platform for d in (jax.devices() if devices is None else devices)}
    return dict(CPU_OPTIONS) if platforms == {"cpu"} else None
