"""FG-ARI: the adjusted Rand index of a segmentation over the foreground pixels.

The object-centric field's standard (SAVi's `lib/metrics.py` computes the same): per
video, over all its frames at once (a slot that changes object between frames is
penalised), ignoring pixels whose ground truth is background. 1 = the segmentation
equals the ground truth up to a renaming of the segments; about 0 = chance.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _pairs(n: jax.Array) -> jax.Array:
    return n * (n - 1.0) / 2.0


def adjusted_rand_index(true_ids: jax.Array, pred_ids: jax.Array, weights: jax.Array,
                        num_true: int, num_pred: int) -> jax.Array:
    """ARI per row: true_ids, pred_ids int [B, P] (segment ids < num_true / num_pred),
    weights [B, P] in {0, 1} (the pixels that count) -> float32 [B].

    When both segmentations put every counted pixel in one segment (or fewer than two
    pixels count) the index is undefined; it is 1 then (the segmentations agree).
    """
    t = jax.nn.one_hot(true_ids, num_true) * weights[..., None].astype(jnp.float32)
    p = jax.nn.one_hot(pred_ids, num_pred)
    n = jnp.einsum("bpi,bpj->bij", t, p, precision=jax.lax.Precision.HIGHEST)
    a, b, total = n.sum(2), n.sum(1), n.sum((1, 2))
    index = _pairs(n).sum((1, 2))
    sa, sb = _pairs(a).sum(1), _pairs(b).sum(1)
    expected = sa * sb / jnp.maximum(_pairs(total), 1.0)
    denom = (sa + sb) / 2.0 - expected
    ok = denom > 1e-9
    return jnp.where(ok, (index - expected) / jnp.where(ok, denom, 1.0), 1.0)


def fg_ari(gt_masks: jax.Array, pred_segments: jax.Array, num_true: int, num_pred: int,
           background_id: int = 0) -> jax.Array:
    """FG-ARI per video: gt_masks and pred_segments int [B, T, H, W] -> float32 [B]."""
    B = gt_masks.shape[0]
    gt = gt_masks.reshape(B, -1).astype(jnp.int32)
    pred = pred_segments.reshape(B, -1).astype(jnp.int32)
    return adjusted_rand_index(gt, pred, (gt != background_id), num_true, num_pred)
