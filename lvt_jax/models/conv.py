"""2-D convolutions (NHWC inputs, HWIO kernels) with gradients in fast forms for XLA:CPU.

The values equal `lax.conv_general_dilated` with PyTorch's symmetric zero padding; only
the way they are computed differs:

* a strided conv whose kernel is a multiple of the stride (the VQ-VAE's 4x4 stride-2
  convs) runs as a stride-1 conv on the space-to-depth rearranged input (kernel k/s,
  s*s times the channels): its input gradient is then a plain conv instead of a
  dilated one;
* a 1x1 conv is a matrix product (:func:`lvt_jax.models.linear.dense_nd`);
* every stride-1 conv carries a hand-written gradient: the input gradient is the conv of
  the output gradient with the flipped kernel (what autodiff does too), the kernel
  gradient is one matrix product per tap, ``dY^T @ X_tap``, with ``dY^T`` materialised
  once. XLA:CPU otherwise runs the kernel gradient as a convolution that contracts over
  the batch, at a quarter to a half of its matrix-product rate (profiled in
  ``docs/benchmarks.md``, stage 1).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from lvt_jax.models.linear import dense_nd

_DN = ("NHWC", "HWIO", "NHWC")

# Experiment switches (removed once chosen).
FWD = "xla"
DW = "tapsT"


def _xla_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DN,
                                    preferred_element_type=None)


def _patches(x: jax.Array, kh: int, kw: int) -> jax.Array:
    B, H, W, _ = x.shape
    oh, ow = H - kh + 1, W - kw + 1
    return jnp.concatenate([x[:, i:i + oh, j:j + ow, :] for i in range(kh) for j in range(kw)],
                           axis=-1)


def _use_xla(kernel):
    kh, kw = kernel.shape[:2]
    return FWD == "xla" or (FWD == "odd" and kh % 2 == 1 and kw % 2 == 1)


def _fwd_value(x, kernel):
    kh, kw, ci, co = kernel.shape
    if _use_xla(kernel):
        return _xla_valid(x, kernel)
    p = _patches(x, kh, kw)
    return (p.reshape(-1, kh * kw * ci) @ kernel.reshape(-1, co)).reshape(*p.shape[:3], co)


@jax.custom_vjp
def conv_valid(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """Stride-1 'VALID' conv: ``x [B, H, W, Ci]``, ``kernel [kh, kw, Ci, Co]``."""
    return _fwd_value(x, kernel)


def _conv_valid_fwd(x, kernel):
    return _fwd_value(x, kernel), (x, kernel)


def _kernel_grad(x, dy, kh, kw):
    """``dW[i, j] = X_{ij}^T dY`` as plain products: ``[kh, kw, Ci, Co]``."""
    B, oh, ow, co = dy.shape
    ci = x.shape[-1]
    d = dy.reshape(-1, co)
    if DW == "tapsT":
        dt = lax.optimization_barrier(d.T)  # [Co, N], plain-layout lhs of every product
        taps = [dt @ x[:, i:i + oh, j:j + ow, :].reshape(-1, ci)
                for i in range(kh) for j in range(kw)]  # each [Co, Ci]
        return jnp.stack(taps, 0).reshape(kh, kw, co, ci).transpose(0, 1, 3, 2)
    if DW == "DtP":
        dt = lax.optimization_barrier(d.T)
        p = _patches(x, kh, kw).reshape(-1, kh * kw * ci)
        return (dt @ p).T.reshape(kh, kw, ci, co)
    if DW == "PT":
        xt = lax.optimization_barrier(x.transpose(3, 0, 1, 2))
        pt = jnp.concatenate([xt[:, :, i:i + oh, j:j + ow].reshape(ci, -1)
                              for i in range(kh) for j in range(kw)], 0)
        return (pt @ d).reshape(kh, kw, ci, co)
    # "xla": autodiff's own form
    return jax.vjp(lambda k: _xla_valid(x, k), jnp.zeros((kh, kw, ci, co), x.dtype))[1](dy)[0]


def _conv_valid_bwd(res, dy):
    x, kernel = res
    kh, kw, _, _ = kernel.shape
    if _use_xla(kernel):
        flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
        dyp = jnp.pad(dy, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
        dx = _xla_valid(dyp, flipped)
    else:
        ci, co = kernel.shape[2:]
        B, oh, ow, _ = dy.shape
        dp = (dy.reshape(-1, co) @ kernel.reshape(-1, co).T).reshape(B, oh, ow, kh, kw, ci)
        dx = sum(jnp.pad(dp[:, :, :, i, j, :], ((0, 0), (i, kh - 1 - i), (j, kw - 1 - j), (0, 0)))
                 for i in range(kh) for j in range(kw))
    return dx, _kernel_grad(x, dy, kh, kw).astype(kernel.dtype)


conv_valid.defvjp(_conv_valid_fwd, _conv_valid_bwd)


def space_to_depth(x: jax.Array, s: int) -> jax.Array:
    """``[B, H, W, C] -> [B, H/s, W/s, s*s*C]``, channel order (row phase, column phase, C)."""
    B, H, W, C = x.shape
    return x.reshape(B, H // s, s, W // s, s, C).transpose(0, 1, 3, 2, 4, 5).reshape(
        B, H // s, W // s, s * s * C)


def kernel_to_depth(kernel: jax.Array, s: int) -> jax.Array:
    """Kernel of a stride-s conv -> the equivalent stride-1 kernel over space_to_depth input."""
    kh, kw, ci, co = kernel.shape
    k = kernel.reshape(kh // s, s, kw // s, s, ci, co).transpose(0, 2, 1, 3, 4, 5)
    return k.reshape(kh // s, kw // s, s * s * ci, co)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0) -> jax.Array:
    """``torch.nn.functional.conv2d`` (no bias) in NHWC / HWIO: symmetric zero padding."""
    kh, kw, ci, co = kernel.shape
    B, H, W, _ = x.shape
    s, p = int(stride), int(padding)
    if s == 1 and kh == kw == 1 and p == 0:
        return dense_nd(x, kernel.reshape(ci, co))
    oh, ow = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1
    if s == 1:
        return conv_valid(jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0))), kernel)
    if kh % s == 0 and kw % s == 0:
        # Rows read: up to s*(oh-1) + kh - 1 of the padded input; round up to a multiple of s.
        hp = -(-(s * (oh - 1) + kh) // s) * s
        wp = -(-(s * (ow - 1) + kw) // s) * s
        xp = jnp.pad(x, ((0, 0), (p, max(hp - H - p, 0)), (p, max(wp - W - p, 0)), (0, 0)))
        xp = xp[:, :hp, :wp]
        y = conv_valid(space_to_depth(xp, s), kernel_to_depth(kernel, s))
        return y[:, :oh, :ow]
    return lax.conv_general_dilated(x, kernel, (s, s), ((p, p), (p, p)), dimension_numbers=_DN)
