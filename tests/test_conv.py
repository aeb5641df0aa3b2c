"""lvt_jax.models.conv equals lax.conv_general_dilated (values and gradients) for every
kernel / stride / padding the layers use, and for a few they don't (the fallback)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from lvt_jax.models import conv

HI = lax.Precision.HIGHEST


def _lax_conv(x, k, s, p):
    return lax.conv_general_dilated(x, k, (s, s), ((p, p), (p, p)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=HI)


@pytest.mark.parametrize("k,s,p,hw", [
    (3, 1, 1, (6, 7)),    # the VQ-VAE's 3x3 convs
    (1, 1, 0, (5, 5)),    # its 1x1 convs (a matrix product)
    (4, 2, 1, (8, 6)),    # its 4x4 stride-2 convs (space-to-depth)
    (4, 2, 1, (7, 9)),    # odd sizes: the last row/column of the padded input is not read
    (2, 2, 0, (6, 6)),
    (6, 3, 2, (9, 10)),
    (2, 1, 0, (5, 6)),    # even stride-1 kernel (the sub-pixel deconv's form)
    (5, 1, 2, (6, 5)),
    (3, 2, 1, (7, 7)),    # kernel not a multiple of the stride: plain lax fallback
])
def test_conv2d_equals_lax_conv_values_and_gradients(k, s, p, hw):
    rng = np.random.default_rng(k * 100 + s * 10 + p)
    x = jnp.asarray(rng.normal(size=(2, *hw, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 3, 4)), jnp.float32)
    with jax.default_matmul_precision("highest"):
        got = conv.conv2d(x, w, s, p)
        want = _lax_conv(x, w, s, p)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        ct = jnp.asarray(rng.normal(size=want.shape), jnp.float32)
        g_got = jax.grad(lambda a, b: jnp.vdot(conv.conv2d(a, b, s, p), ct), (0, 1))(x, w)
        g_want = jax.grad(lambda a, b: jnp.vdot(_lax_conv(a, b, s, p), ct), (0, 1))(x, w)
    for a, b in zip(g_got, g_want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_conv_valid_jits_and_keeps_bfloat16():
    x = jnp.ones((1, 5, 5, 2), jnp.bfloat16)
    w = jnp.ones((3, 3, 2, 3), jnp.bfloat16)
    y, grads = jax.jit(jax.value_and_grad(lambda a, b: conv.conv_valid(a, b).astype(
        jnp.float32).sum(), (0, 1)))(x, w)
    assert float(y) == 9 * 2 * 3 * 9
    assert grads[0].dtype == grads[1].dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(grads[1], np.float32), 9.0)
