"""Decomposed vector quantiser with EMA codebook updates (VQ-VAE-2 style).

The codebooks live in the non-gradient collection 'vq' together with their EMA
statistics. Under `jax.jit` on globally sharded arrays the cluster counts and sums below
are reductions over the *global* batch, so the statistics are summed over every data
shard without an explicit all-reduce.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

CODEBOOK_AXES = ("codebook", "code", "code_dim")


def _search(flat: jax.Array, books: jax.Array) -> jax.Array:
    """Nearest code per (row, codebook) by squared L2: (r, k, d), (k, n, d) -> int32 (r, k).

    Distances are laid out (k, r, n), the order the batched (over k) matmul produces,
    so the largest tensor here is never transposed. The first index of the minimum is
    found as min(where(dist == min, index, n)): argmin's (value, index) reduction is
    ~1.5x slower on CPU; the result is the same (clamped, should dist hold a NaN).
    """
    n = books.shape[1]
    dist = (jnp.sum(flat ** 2, -1).T[:, :, None]
            - 2 * jnp.einsum("bkd,knd->kbn", flat, books, precision=jax.lax.Precision.HIGHEST)
            + jnp.sum(books ** 2, -1)[:, None, :])
    first = jnp.where(dist == jnp.min(dist, -1, keepdims=True), jnp.arange(n, dtype=jnp.int32), n)
    return jnp.minimum(jnp.min(first, -1), n - 1).T


def nearest_codes(flat: jax.Array, books: jax.Array, chunk_rows: int = 512) -> jax.Array:
    """`_search` over row chunks of about `chunk_rows` rows: int32 (b, k).

    Why: all b * k * n distances at once are a memory-bound tensor (512 MiB for 256
    frames); chunk by chunk they stay in cache (8x faster encoding on CPU, same codes).
    Chunk j holds rows j, j + m, j + 2m, ... (m chunks), so a batch sharded over devices
    stays sharded inside every chunk.
    """
    chex.assert_rank(flat, 3)
    b = flat.shape[0]
    m = next((n for n in range(b // max(chunk_rows, 1), 1, -1) if b % n == 0), 1)
    if m == 1:
        return _search(flat, books)
    chunks = jnp.moveaxis(flat.reshape(b // m, m, *flat.shape[1:]), 1, 0)  # (m, b/m, k, d)
    codes = jax.lax.map(lambda f: _search(f, books), chunks)  # (m, b/m, k)
    return jnp.moveaxis(codes, 0, 1).reshape(b, flat.shape[1])


def cluster_stats(codes: jax.Array, flat: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """Per codebook and code: how many rows chose it (k, n) and the sum of those rows
    (k, n, d), from codes (b, k) and rows (b, k, d), as scatter-adds.

    Why not one_hot(codes)^T @ rows: the one-hot tensor (b, k, n) is 64 MiB for a 32-frame
    batch and took ~5% of the training step on CPU; the scatter-adds take ~1 ms.
    """
    k = codes.shape[1]
    book = jnp.broadcast_to(jnp.arange(k, dtype=codes.dtype), codes.shape)
    counts = jnp.zeros((k, n), jnp.float32).at[book, codes].add(1.0)
    sums = jnp.zeros((k, n, flat.shape[-1]), jnp.float32).at[book, codes].add(flat)
    return counts, sums


class DecomposedQuantizer(nn.Module):
    num_codebooks: int = 4
    codebook_size: int = 512
    code_dim: int = 64
    decay: float = 0.99
    eps: float = 1e-5

    def setup(self):
        k, n, d = self.num_codebooks, self.codebook_size, self.code_dim

        def uniform():  # the rng is drawn only when the variable is created
            return jax.random.uniform(self.make_rng("params"), (k, n, d), jnp.float32,
                                      -1.0 / n, 1.0 / n)

        part = nn.with_logical_partitioning
        self.codebook = self.variable("vq", "codebook", part(uniform, CODEBOOK_AXES))
        self.ema_count = self.variable(
            "vq", "ema_count", part(jnp.zeros, CODEBOOK_AXES[:2]), (k, n), jnp.float32)
        # The EMA sums start equal to the codebook, so codebook = ema_sum / size stays
        # consistent from the first update on.
        self.ema_sum = self.variable(
            "vq", "ema_sum", part(lambda: jnp.asarray(self.codebook.value), CODEBOOK_AXES))

    def lookup(self, codes: jax.Array) -> jax.Array:
        """Codes (..., num_codebooks) -> concatenated code vectors (..., num_codebooks * dim)."""
        chex.assert_axis_dimension(codes, -1, self.num_codebooks)
        books = self.codebook.value
        vecs = [jnp.take(books[i], codes[..., i], axis=0) for i in range(self.num_codebooks)]
        return jnp.concatenate(vecs, axis=-1)

    def __call__(self, z: jax.Array, *, update: bool):
        """Quantises z (..., num_codebooks * dim); returns (straight-through q, codes, commitment).

        Always in float32 (z of a lower-precision encoder is cast first): the distances,
        the EMA statistics and the codebooks keep full precision under mixed precision.
        """
        k, d = self.num_codebooks, self.code_dim
        chex.assert_axis_dimension(z, -1, k * d)
        z = z.astype(jnp.float32)
        lead = z.shape[:-1]
        flat = z.reshape(-1, k, d)
        books = self.codebook.value  # (k, n, d)
        codes = nearest_codes(flat, books)  # (b, k)
        q = jnp.take_along_axis(books[None], codes[:, :, None, None], axis=2)[:, :, 0]
        q = q.reshape(z.shape)

        if update and not self.is_initializing():
            counts, sums = cluster_stats(codes, jax.lax.stop_gradient(flat), self.codebook_size)
            g = self.decay
            ema_count = g * self.ema_count.value + (1 - g) * counts
            ema_sum = g * self.ema_sum.value + (1 - g) * sums
            total = jnp.sum(ema_count, axis=-1, keepdims=True)
            # Laplace smoothing keeps unused codes from dividing by zero.
            size = (ema_count + self.eps) / (total + self.codebook_size * self.eps) * total
            self.ema_count.value = ema_count
            self.ema_sum.value = ema_sum
            self.codebook.value = ema_sum / size[..., None]

        commitment = jnp.mean((z - jax.lax.stop_gradient(q)) ** 2)
        q_st = z + jax.lax.stop_gradient(q - z)
        return q_st, codes.reshape(*lead, k), commitment
