"""The swap test of HDR's disentanglement, measured with ground-truth masks.

Clip A's time-independent latents are replaced by clip B's, its time-varying ones kept.
If the split is right, appearance follows B and motion follows A.

Objects: in each clip the object slot that best overlaps a ground-truth object (IoU of
the slot's segment with the object's mask over the whole clip) is that clip's tracked
object. A's tracked slot gets B's tracked slot's static latent; then
  appearance follows B  <=>  the mean colour rendered on A's object pixels is closer to
                             B's object's true mean colour than to A's;
  motion follows A      <=>  the swapped slot's segment overlaps A's object (IoU >= 0.5).
Only pairs whose two objects differ in colour (true mean colours more than
`min_colour_gap` apart, in [0, 1] RGB) count. `swap_score` is the fraction of counted
pairs where both hold; its parts are reported too.

Background: A is rendered with B's static background map; on the pixels that are table
in both clips (same frame), the rendering should be closer to B's frame than to A's.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

MOTION_IOU = 0.5


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of x [B, ..., C] over the pixels where mask [B, ...] is true -> [B, C]."""
    m = mask.astype(jnp.float32)[..., None]
    axes = tuple(range(1, x.ndim - 1))
    return jnp.sum(x * m, axes) / jnp.maximum(jnp.sum(m, axes), 1.0)


def match_objects(segments: jax.Array, gt: jax.Array, num_slots: int, num_ids: int,
                  first_object_id: int = 2) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Best (object slot, ground-truth object id) pair per clip by IoU over the clip.

    segments int [B, T, H, W] (slot 0 = background, never matched), gt int [B, T, H, W]
    -> (slot [B], gt id [B], IoU [B]); IoU 0 where the clip shows no object.
    """
    B = segments.shape[0]
    s = jax.nn.one_hot(segments.reshape(B, -1), num_slots)[..., 1:]
    g = jax.nn.one_hot(gt.reshape(B, -1), num_ids)[..., first_object_id:]
    inter = jnp.einsum("bpk,bpg->bkg", s, g, precision=jax.lax.Precision.HIGHEST)
    union = s.sum(1)[:, :, None] + g.sum(1)[:, None, :] - inter
    iou = inter / jnp.maximum(union, 1.0)
    flat = iou.reshape(B, -1)
    best = jnp.argmax(flat, -1)
    n_ids = num_ids - first_object_id
    return (best // n_ids + 1).astype(jnp.int32), (best % n_ids + first_object_id).astype(
        jnp.int32), jnp.max(flat, -1)


def object_swap(swapped_frames: jax.Array, swapped_segments: jax.Array, real_a: jax.Array,
                real_b: jax.Array, gt_a: jax.Array, gt_b: jax.Array, slot_a: jax.Array,
                id_a: jax.Array, id_b: jax.Array, valid: jax.Array,
                min_colour_gap: float = 0.2) -> dict[str, jax.Array]:
    """Per pair (A = row i, B its partner): float32 [B] indicators and IoUs.

    Frames in [0, 1] [B, T, H, W, 3]; segments / gt int [B, T, H, W]; slot_a, id_a, id_b
    [B] from `match_objects`; valid [B] marks pairs whose matches are real objects.
    """
    obj_a = gt_a == id_a[:, None, None, None]
    obj_b = gt_b == id_b[:, None, None, None]
    colour_a, colour_b = _masked_mean(real_a, obj_a), _masked_mean(real_b, obj_b)
    rendered = _masked_mean(swapped_frames, obj_a)
    e_a = jnp.linalg.norm(rendered - colour_a, axis=-1)
    e_b = jnp.linalg.norm(rendered - colour_b, axis=-1)
    counted = valid & (jnp.linalg.norm(colour_a - colour_b, axis=-1) > min_colour_gap)
    seg = swapped_segments == slot_a[:, None, None, None]
    inter = jnp.sum(seg & obj_a, (1, 2, 3)).astype(jnp.float32)
    union = jnp.sum(seg | obj_a, (1, 2, 3)).astype(jnp.float32)
    motion_iou = inter / jnp.maximum(union, 1.0)
    appearance = (e_b < e_a).astype(jnp.float32)
    both = appearance * (motion_iou >= MOTION_IOU)
    c = counted.astype(jnp.float32)
    return {"pairs": c, "appearance": appearance * c, "motion_iou": motion_iou * c,
            "score": both * c}


def background_swap(swapped_frames: jax.Array, real_a: jax.Array, real_b: jax.Array,
                    gt_a: jax.Array, gt_b: jax.Array) -> jax.Array:
    """float32 [B]: 1 where A rendered with B's background map is closer to B's frames
    than to A's on the pixels that are table in both (mean absolute error)."""
    table = ((gt_a == 0) & (gt_b == 0))[..., None].astype(jnp.float32)
    n = jnp.maximum(jnp.sum(table, (1, 2, 3, 4)) * 3.0, 1.0)
    e_a = jnp.sum(jnp.abs(swapped_frames - real_a) * table, (1, 2, 3, 4)) / n
    e_b = jnp.sum(jnp.abs(swapped_frames - real_b) * table, (1, 2, 3, 4)) / n
    return (e_b < e_a).astype(jnp.float32)
