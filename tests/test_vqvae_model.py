"""Stage-1 model: exact parameter counts, PyTorch-equivalent layers, EMA quantiser."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bair
from lvt_jax import summary
from lvt_jax.models.layers import Conv, ConvTranspose
from lvt_jax.models.lvt.quantizer import DecomposedQuantizer


def test_paper_parameter_counts():
    counts, _ = summary.vqvae_counts(bair.get_config())
    assert counts == {"encoder": 1_777_024, "decoder": 1_776_771, "codebooks": 131_072,
                      "total": 3_684_867}


def _torch_conv_transpose(x, w, b, stride, pad):
    """Direct definition of torch ConvTranspose2d: scatter-add of input * kernel.

    x (N, H, W, Cin); w in torch layout (Cin, Cout, kh, kw).
    """
    n, h, wd, cin = x.shape
    _, cout, kh, kw = w.shape
    full = np.zeros((n, (h - 1) * stride + kh, (wd - 1) * stride + kw, cout))
    for i in range(h):
        for j in range(wd):
            contrib = np.einsum("nc,cokl->nklo", x[:, i, j], w)
            full[:, i * stride:i * stride + kh, j * stride:j * stride + kw] += contrib
    out = full[:, pad:full.shape[1] - pad, pad:full.shape[2] - pad]
    return out + b


def test_conv_transpose_matches_torch_definition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 6, 3))
    mod = ConvTranspose(4, 4, 2, 1)
    params = nn.unbox(mod.init(jax.random.key(0), jnp.asarray(x, jnp.float32)))["params"]
    k = np.asarray(params["kernel"], np.float64)  # (kh, kw, out, in), transpose_kernel
    b = np.asarray(params["bias"], np.float64)
    # transpose_kernel stores the forward conv's kernel: torch weight[i, o, k, l] = kernel[k, l, o, i].
    w_torch = np.transpose(k, (3, 2, 0, 1))
    want = _torch_conv_transpose(x, w_torch, b, 2, 1)
    got = np.asarray(mod.apply({"params": params}, jnp.asarray(x, jnp.float32)))
    assert got.shape == (2, 10, 12, 4)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_strided_conv_matches_direct_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 8, 8, 2))
    mod = Conv(3, 4, stride=2, padding=1)
    params = nn.unbox(mod.init(jax.random.key(0), jnp.asarray(x, jnp.float32)))["params"]
    k = np.asarray(params["kernel"], np.float64)
    b = np.asarray(params["bias"], np.float64)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((1, 4, 4, 3))
    for i in range(4):
        for j in range(4):
            want[:, i, j] = np.einsum("nklc,klco->no", xp[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4], k) + b
    got = np.asarray(mod.apply({"params": params}, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_ema_quantizer_update_matches_numpy():
    k, n, d, decay, eps = 2, 8, 3, 0.9, 1e-5
    q = DecomposedQuantizer(num_codebooks=k, codebook_size=n, code_dim=d, decay=decay, eps=eps)
    z = jax.random.normal(jax.random.key(1), (4, 5, k * d)) * 0.01
    variables = nn.unbox(q.init(jax.random.key(0), z, update=False))
    book = np.asarray(variables["vq"]["codebook"], np.float64)
    (q_st, codes, commit), new = q.apply(variables, z, update=True, mutable=["vq"])
    new = nn.unbox(new)["vq"]

    flat = np.asarray(z, np.float64).reshape(-1, k, d)
    want_codes = np.stack([np.argmin(((flat[:, i, None] - book[i][None]) ** 2).sum(-1), -1)
                           for i in range(k)], -1)
    np.testing.assert_array_equal(np.asarray(codes).reshape(-1, k), want_codes)
    counts = np.stack([np.bincount(want_codes[:, i], minlength=n) for i in range(k)])
    sums = np.stack([np.stack([flat[want_codes[:, i] == c, i].sum(0) for c in range(n)])
                     for i in range(k)])
    ema_count = (1 - decay) * counts
    ema_sum = decay * book + (1 - decay) * sums
    total = ema_count.sum(-1, keepdims=True)
    size = (ema_count + eps) / (total + n * eps) * total
    np.testing.assert_allclose(np.asarray(new["ema_count"]), ema_count, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(new["codebook"]), ema_sum / size[..., None],
                               rtol=1e-4, atol=1e-6)
    quantised = np.stack([book[i][want_codes[:, i]] for i in range(k)], 1).reshape(z.shape)
    np.testing.assert_allclose(np.asarray(q_st), quantised, atol=1e-6)
    np.testing.assert_allclose(float(commit), np.mean((np.asarray(z) - quantised) ** 2), rtol=1e-5)


def test_straight_through_gradient_and_no_update_in_eval():
    q = DecomposedQuantizer(num_codebooks=2, codebook_size=4, code_dim=2)
    z = jax.random.normal(jax.random.key(2), (3, 4))
    variables = nn.unbox(q.init(jax.random.key(0), z, update=False))
    g = jax.grad(lambda z: jnp.sum(q.apply(variables, z, update=False)[0] * 3.0))(z)
    np.testing.assert_allclose(np.asarray(g), 3.0)  # identity through the quantiser
    _, new = q.apply(variables, z, update=False, mutable=["vq"])
    np.testing.assert_array_equal(np.asarray(nn.unbox(new)["vq"]["codebook"]),
                                  np.asarray(variables["vq"]["codebook"]))


@pytest.mark.parametrize("k,s,p", [(4, 2, 1), (2, 2, 0), (6, 2, 2), (3, 3, 0)])
def test_subpixel_conv_transpose_equals_dilated_form(k, s, p):
    from jax import lax
    from lvt_jax.models.layers import subpixel_conv_transpose
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(2, 5, 7, 3)), jnp.float32)
    ker = jnp.asarray(rng.normal(size=(k, k, 4, 3)), jnp.float32)
    want = lax.conv_transpose(x, ker, (s, s), ((k - 1 - p,) * 2,) * 2,
                              dimension_numbers=("NHWC", "HWIO", "NHWC"), transpose_kernel=True)
    got = subpixel_conv_transpose(x, ker, s, p)
    assert got.shape == want.shape == (2, 5 * s, 7 * s, 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4)
