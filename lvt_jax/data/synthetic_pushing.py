"""Procedural BAIR-like robot-pushing videos, as a TFDS builder `synthetic_pushing`.

Why: the real BAIR set is 30 GB and needs a manual download; tests, laptops and CI need
a small set with the same structure (a static textured table, a dark gripper on smooth
random paths, a few coloured objects that move only when pushed) that builds offline in
seconds and is byte-for-byte reproducible from a seed.

Video `i` of a split depends only on (seed, split, i): not on the split size or on how
generation is chunked, so a 12-video test set is a prefix of the 2000-video one.

Features per video: `video` uint8 (30, 64, 64, 3); `instance_mask` uint8 (30, 64, 64),
the ground-truth segmentation for object-centric metrics (FG-ARI): 0 table, 1 gripper and
arm, 2 + k object k (ids stable through the video); `gripper_pos` float32 (30, 2) and
`object_pos` float32 (30, 3, 2), (x, y) in pixels (pixel centres at i + 0.5; absent
objects 0); `num_objects` int32. Storage is array_record with plain `tfds.features.Tensor`
features (raw bytes), which `tfds.data_source` / `builder.as_data_source()` decode with
numpy only (no TensorFlow). Configs are named `train{N}_test{M}_seed{S}`, so different
sizes or seeds never share files.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

NUM_FRAMES = 30
SIZE = 64
MAX_OBJECTS = 3

_SPLIT_CODES = {"train": 0, "test": 1}
_SUBSTEPS = 4  # physics sub-steps per frame, so a fast gripper cannot tunnel through
_GRIPPER_RADIUS = 5.0
_ARM_HALF_WIDTH = 3.0
_NUM_WAYPOINTS = 5
_MAX_HOP = 24.0  # px between consecutive waypoints (~7 frames apart)
_CHUNK = 64  # videos simulated together (the physics loop is per time step, not per video)
_RENDER_CHUNK = 8  # videos rendered together: small enough that the working set stays in cache

# Distinct, saturated object colours (RGB in [0, 1]); objects of a video never share one.
_PALETTE = np.array(
    [
        [0.85, 0.15, 0.12],  # red
        [0.10, 0.60, 0.20],  # green
        [0.12, 0.30, 0.85],  # blue
        [0.95, 0.80, 0.10],  # yellow
        [0.60, 0.20, 0.75],  # purple
        [0.05, 0.70, 0.75],  # cyan
        [0.98, 0.50, 0.05],  # orange
        [0.95, 0.45, 0.70],  # pink
    ],
    dtype=np.float32,
)


@dataclasses.dataclass(frozen=True)
class VideoParams:
    """One video's random draws; the rest of the video is a pure function of them."""

    background: np.ndarray  # (64, 64, 3) float32 in [0, 1]
    waypoints: np.ndarray  # (_NUM_WAYPOINTS, 2) gripper path control points, (x, y) px
    arm_anchor_x: float  # where the arm enters from the top edge
    num_objects: int
    object_pos: np.ndarray  # (MAX_OBJECTS, 2) initial centres (x, y) px; unused rows 0
    object_radius: np.ndarray  # (MAX_OBJECTS,) px; unused rows 0
    object_is_box: np.ndarray  # (MAX_OBJECTS,) bool
    object_color: np.ndarray  # (MAX_OBJECTS, 3) float32


def _smooth_noise(rng: np.random.Generator, grid: int, size: int = SIZE) -> np.ndarray:
    """Low-frequency noise: a random grid x grid field, cubic-upsampled to size x size."""
    coarse = rng.standard_normal((grid + 3, grid + 3))
    # Catmull-Rom interpolation matrix from the padded coarse grid to `size` samples.
    pos = (np.arange(size) + 0.5) / size * grid + 1.0
    base = np.floor(pos).astype(int)
    frac = pos - base
    weights = np.stack(
        [
            0.5 * (-frac + 2 * frac**2 - frac**3),
            0.5 * (2 - 5 * frac**2 + 3 * frac**3),
            0.5 * (frac + 4 * frac**2 - 3 * frac**3),
            0.5 * (-(frac**2) + frac**3),
        ],
        axis=1,
    )
    interp = np.zeros((size, grid + 3))
    for k in range(4):
        interp[np.arange(size), base - 1 + k] += weights[:, k]
    field = interp @ coarse @ interp.T
    return field / (field.std() + 1e-8)


def _table_texture(rng: np.random.Generator) -> np.ndarray:
    """A smooth wood-grain table: low-frequency, so a 4x-downsampling VQ-VAE can code it."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    angle = rng.uniform(0.0, np.pi)
    period = rng.uniform(10.0, 18.0)
    warp = _smooth_noise(rng, 3) * rng.uniform(2.0, 5.0)
    u = x * np.cos(angle) + y * np.sin(angle) + warp
    grain = np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    contrast = rng.uniform(0.05, 0.12)
    brightness = 1.0 + contrast * grain + 0.05 * _smooth_noise(rng, 2)
    lightness = rng.uniform(0.5, 0.8)  # light-to-dark wood tones (R > G > B)
    base = lightness * np.array([1.0, rng.uniform(0.72, 0.85), rng.uniform(0.45, 0.65)])
    tint = 1.0 + 0.03 * np.stack([_smooth_noise(rng, 2) for _ in range(3)], axis=-1)
    table = base * brightness[..., None] * tint
    return np.clip(table, 0.0, 1.0).astype(np.float32)


def sample_video_params(seed: int, split: str, index: int) -> VideoParams:
    """Draws one video's layout from its own RNG stream keyed by (seed, split, index)."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"split must be one of {sorted(_SPLIT_CODES)}, got {split!r}.")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0, got seed={seed}, index={index}.")
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    background = _table_texture(rng)

    # Objects sit in distinct cells of a 3x3 grid, so they start apart.
    num_objects = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = rng.choice(9, size=num_objects, replace=False)
    object_pos = np.zeros((MAX_OBJECTS, 2))
    object_radius = np.zeros(MAX_OBJECTS)
    object_pos[:num_objects, 0] = 12.0 + 20.0 * (cells % 3) + rng.uniform(-3, 3, num_objects)
    object_pos[:num_objects, 1] = 12.0 + 20.0 * (cells // 3) + rng.uniform(-3, 3, num_objects)
    object_radius[:num_objects] = rng.uniform(4.0, 6.5, num_objects)
    object_is_box = np.zeros(MAX_OBJECTS, bool)
    object_is_box[:num_objects] = rng.random(num_objects) < 0.5
    object_color = np.zeros((MAX_OBJECTS, 3), np.float32)
    object_color[:num_objects] = _PALETTE[rng.choice(len(_PALETTE), num_objects, replace=False)]

    # Gripper waypoints: often aimed through an object, so pushes are common.
    lo, hi = _GRIPPER_RADIUS, SIZE - 1 - _GRIPPER_RADIUS
    waypoints = np.zeros((_NUM_WAYPOINTS, 2))
    waypoints[0] = rng.uniform(lo, hi, 2)
    for k in range(1, _NUM_WAYPOINTS):
        if rng.random() < 0.6:
            target = object_pos[rng.integers(num_objects)]
            direction = target - waypoints[k - 1]
            direction /= np.linalg.norm(direction) + 1e-6
            waypoints[k] = target + direction * rng.uniform(3.0, 10.0)
        else:
            waypoints[k] = rng.uniform(lo, hi, 2)
        hop = waypoints[k] - waypoints[k - 1]  # bounded hops keep the arm's speed BAIR-like
        hop *= min(1.0, _MAX_HOP / (np.linalg.norm(hop) + 1e-6))
        waypoints[k] = np.clip(waypoints[k - 1] + hop, lo, hi)
    return VideoParams(
        background=background,
        waypoints=waypoints,
        arm_anchor_x=float(rng.uniform(16.0, 48.0)),
        num_objects=num_objects,
        object_pos=object_pos,
        object_radius=object_radius,
        object_is_box=object_is_box,
        object_color=object_color,
    )


def _gripper_path(waypoints: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Catmull-Rom spline through the waypoints: a smooth path, (V, 2) per time."""
    # waypoints: (V, K, 2) at knots evenly spread over [0, NUM_FRAMES - 1].
    num_knots = waypoints.shape[1]
    padded = np.concatenate([waypoints[:, :1], waypoints, waypoints[:, -1:]], axis=1)
    s = times / (NUM_FRAMES - 1) * (num_knots - 1)
    seg = np.minimum(np.floor(s).astype(int), num_knots - 2)
    f = (s - seg)[None, :, None]
    p0, p1 = padded[:, seg], padded[:, seg + 1]
    p2, p3 = padded[:, seg + 2], padded[:, seg + 3]
    m1, m2 = (p2 - p0) / 2, (p3 - p1) / 2
    h00, h10 = 2 * f**3 - 3 * f**2 + 1, f**3 - 2 * f**2 + f
    h01, h11 = -2 * f**3 + 3 * f**2, f**3 - f**2
    return h00 * p1 + h10 * m1 + h01 * p2 + h11 * m2  # (V, len(times), 2)


def _push_away(
    obj: np.ndarray, grip: np.ndarray, min_dist: np.ndarray, active: np.ndarray
) -> np.ndarray:
    """Moves each object touching the gripper radially out to touching distance."""
    delta = obj - grip
    dist = np.linalg.norm(delta, axis=-1)
    push = active & (dist < min_dist)
    unit = delta / np.maximum(dist, 1e-6)[..., None]
    unit = np.where((dist < 1e-6)[..., None], np.array([1.0, 0.0]), unit)
    return np.where(push[..., None], grip + unit * min_dist[..., None], obj)


def _separate_objects(obj: np.ndarray, radius: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Objects push each other apart symmetrically when they overlap."""
    obj = obj.copy()
    for i in range(MAX_OBJECTS):
        for j in range(i + 1, MAX_OBJECTS):
            d = obj[:, j] - obj[:, i]
            dd = np.linalg.norm(d, axis=-1)
            overlap = radius[:, i] + radius[:, j] - dd
            hit = active[:, i] & active[:, j] & (overlap > 0)
            u = d / np.maximum(dd, 1e-6)[..., None]
            shift = np.where(hit, overlap / 2, 0.0)[..., None] * u
            obj[:, i] -= shift
            obj[:, j] += shift
    return obj


def _slide_along_walls(
    obj: np.ndarray,
    grip: np.ndarray,
    min_dist: np.ndarray,
    active: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
) -> np.ndarray:
    """An object pinned against a table edge by the gripper slides along that edge."""
    obj = obj.copy()
    for axis in (0, 1):
        other = 1 - axis
        delta = obj - grip
        dist = np.linalg.norm(delta, axis=-1)
        pinned = active & (dist < min_dist - 1e-6)
        pinned &= (obj[..., axis] <= lo[..., 0] + 1e-6) | (obj[..., axis] >= hi[..., 0] - 1e-6)
        need = np.sqrt(np.maximum(min_dist**2 - delta[..., axis] ** 2, 0.0))
        sign = np.where(delta[..., other] >= 0, 1.0, -1.0)
        slid = np.clip(grip[..., other] + sign * need, lo[..., 0], hi[..., 0])
        obj[..., other] = np.where(pinned, slid, obj[..., other])
    return obj


def simulate(params: list[VideoParams]) -> tuple[np.ndarray, np.ndarray]:
    """Moves the gripper and pushes objects out of its way, for a batch of videos.

    Returns gripper positions (V, T, 2) and object positions (V, T, MAX_OBJECTS, 2),
    both (x, y) in pixels. Objects are kinematic: displaced just enough not to overlap
    the gripper (or each other) and kept on the table; one pinned against a table edge
    by the gripper slides along the edge, and one wedged in a corner stops the gripper.
    """
    waypoints = np.stack([p.waypoints for p in params])
    radius = np.stack([p.object_radius for p in params])  # (V, O)
    active = radius > 0
    obj = np.stack([p.object_pos for p in params]).copy()  # (V, O, 2)
    times = np.arange((NUM_FRAMES - 1) * _SUBSTEPS + 1) / _SUBSTEPS
    path = _gripper_path(waypoints, times)  # (V, S, 2)
    lo = radius[..., None] + 1.0
    hi = SIZE - 2.0 - radius[..., None]
    obj_frames = np.zeros((len(params), NUM_FRAMES, MAX_OBJECTS, 2))
    min_dist = _GRIPPER_RADIUS + radius  # (V, O)
    for step in range(path.shape[1]):
        grip = path[:, step, None, :]  # (V, 1, 2)
        for _ in range(2):  # a second pass settles what the first pass's moves disturbed
            obj = _push_away(obj, grip, min_dist, active)
            obj = _separate_objects(obj, radius, active)
            obj = np.where(active[..., None], np.clip(obj, lo, hi), 0.0)
            obj = _slide_along_walls(obj, grip, min_dist, active, lo, hi)
        # An object wedged in a corner cannot move: it stops the gripper instead.
        for k in range(MAX_OBJECTS):
            delta = grip[:, 0] - obj[:, k]
            dist = np.linalg.norm(delta, axis=-1)
            blocked = active[:, k] & (dist < min_dist[:, k])
            unit = delta / np.maximum(dist, 1e-6)[..., None]
            grip = np.where(
                blocked[:, None, None], (obj[:, k] + unit * min_dist[:, k, None])[:, None], grip
            )
        path[:, step] = grip[:, 0]
        if step % _SUBSTEPS == 0:
            obj_frames[:, step // _SUBSTEPS] = obj
    return path[:, ::_SUBSTEPS].astype(np.float32), obj_frames.astype(np.float32)


def _coverage(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (px, negative inside)."""
    return np.clip(0.5 - signed_distance, 0.0, 1.0)


_PAD = 12  # canvas margin so object windows never leave the array
_WINDOW = 22  # object windows: floor(centre) - 9 .. floor(centre) + 12 covers body and shadow


def _object_distance(
    dx: np.ndarray, dy: np.ndarray, r: np.ndarray, is_box: np.ndarray
) -> np.ndarray:
    """Signed distance to a disc of radius r, or to a square of half-side 0.85 r."""
    ax, ay = np.abs(dx), np.abs(dy)
    return np.where(is_box, np.maximum(ax, ay) - 0.85 * r, np.sqrt(ax * ax + ay * ay) - r)


# Instance-mask labels; a pixel takes the front-most body whose coverage exceeds one half.
TABLE_ID, GRIPPER_ID, FIRST_OBJECT_ID = 0, 1, 2


def _draw_objects(
    canvas: np.ndarray, labels: np.ndarray, params: list[VideoParams], objects: np.ndarray
) -> None:
    """Draws each object (and its soft shadow) in a small window around it, in place.

    canvas is (V, T, 3, H + 2*_PAD, W + 2*_PAD), labels (V, T, H + 2*_PAD, W + 2*_PAD): an
    object labels the pixels it covers by more than half, over earlier objects, as it is
    drawn over them. Working on 22x22 windows gathered with flat indices instead of whole
    frames is what keeps generation fast.
    """
    _, _, _, height, width = canvas.shape
    flat = canvas.reshape(-1)
    label_flat = labels.reshape(-1)
    offsets = np.arange(_WINDOW)
    channel = np.arange(3)[:, None, None] * (height * width)  # (3, 1, 1)
    for k in range(MAX_OBJECTS):
        radius = np.array([p.object_radius[k] for p in params], np.float32)
        videos = np.flatnonzero(radius > 0)  # only the videos that have object k
        if videos.size == 0:
            continue
        centre = objects[videos, :, k]  # (V', T, 2)
        origin = np.floor(centre).astype(np.int64) - 9 + _PAD  # padded coordinates
        rows = origin[..., 1, None] + offsets  # (V', T, W)
        cols = origin[..., 0, None] + offsets
        frame = (videos[:, None] * NUM_FRAMES + np.arange(NUM_FRAMES)) * (3 * height * width)
        pixel = rows[..., :, None] * width + cols[..., None, :]  # (V', T, W, W)
        index = frame[..., None, None, None] + channel + pixel[:, :, None]  # (V', T, 3, W, W)
        window = flat[index]
        label_index = frame[..., None, None] // 3 + pixel  # (V', T, W, W): same pixels, 1 channel
        # Separable coordinates relative to the centre: (V', T, 1, 1, W) and (V', T, 1, W, 1).
        dx = (cols - _PAD + 0.5 - centre[..., 0, None]).astype(np.float32)[..., None, None, :]
        dy = (rows - _PAD + 0.5 - centre[..., 1, None]).astype(np.float32)[..., None, :, None]
        r = radius[videos][:, None, None, None, None]
        is_box = np.array([params[v].object_is_box[k] for v in videos])[:, None, None, None, None]
        shadow_sd = _object_distance(dx - 1.5, dy - 2.0, r, is_box)
        keep = 1.0 - 0.3 * np.clip(0.5 - shadow_sd / 1.5, 0.0, 1.0)
        alpha = _coverage(_object_distance(dx, dy, r, is_box))
        # Light from the top-left: a gentle shading gradient across the object.
        shade = 1.0 + 0.12 * np.clip(-(dx + dy) / (2 * r + 1e-6), -1.0, 1.0)
        color = np.stack([params[v].object_color[k] for v in videos])[:, None, :, None, None]
        window *= keep * (1.0 - alpha)
        window += color * (shade * alpha)
        flat[index] = window
        covered = alpha[:, :, 0] > 0.5
        label_flat[label_index[covered]] = FIRST_OBJECT_ID + k


def render(
    params: list[VideoParams], gripper: np.ndarray, objects: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Draws the videos: table, objects, then the gripper and its shadow.

    Returns the video uint8 (V, T, 64, 64, 3) and its instance mask uint8 (V, T, 64, 64),
    labelled from the same coverages that blend the bodies in (shadows are not bodies).
    Works channels-first (V, T, 3, H, W) so per-pixel factors broadcast over a leading axis.
    """
    background = np.stack([p.background for p in params]).transpose(0, 3, 1, 2)
    background = np.pad(background, ((0, 0), (0, 0), (_PAD, _PAD), (_PAD, _PAD)), mode="edge")
    canvas = np.repeat(background[:, None], NUM_FRAMES, axis=1)
    labels = np.full((len(params), NUM_FRAMES) + canvas.shape[-2:], TABLE_ID, np.uint8)
    _draw_objects(canvas, labels, params, objects)

    # The gripper: a dark arm entering from the top edge and a round head. Distances are
    # built from separable per-row / per-column terms, on a grid 3 px larger up/left so
    # that the shadow (cast 2 px right, 3 px down) is a shifted slice of the same field.
    coords = np.arange(-3, SIZE, dtype=np.float32) + 0.5
    gx = gripper[..., 0, None, None]  # (V, T, 1, 1)
    gy = gripper[..., 1, None, None]
    dx = coords[None, None, None, :] - gx  # (V, T, 1, W)
    dy = coords[None, None, :, None] - gy  # (V, T, H, 1)
    ax = np.array([p.arm_anchor_x for p in params], np.float32)[:, None, None, None]
    vx, vy = gx - ax, gy + np.float32(8.0)  # arm direction: anchor (ax, -8) -> gripper
    length = np.sqrt(vx * vx + vy * vy)
    # Distance to the arm's line; past the gripper end the head covers the arm.
    perp = np.abs(dx * (vy / length) - dy * (vx / length))
    beyond = (dx * vx + dy * vy) > 0
    arm_sd = np.where(beyond, np.float32(1e3), perp - _ARM_HALF_WIDTH)
    head_sd = np.sqrt(dx * dx + dy * dy) - _GRIPPER_RADIUS
    body_sd = np.minimum(arm_sd, head_sd)
    shadow = np.clip(0.5 - body_sd[:, :, 0:SIZE, 1 : SIZE + 1] / 2.0, 0.0, 1.0)
    dx, dy = dx[..., 3:], dy[:, :, 3:]
    highlight = _coverage(np.sqrt((dx + 1.2) ** 2 + (dy + 1.2) ** 2) - 2.0)
    on_head = head_sd[:, :, 3:, 3:] < arm_sd[:, :, 3:, 3:]
    grey = np.where(on_head, np.float32(0.22), np.float32(0.30))
    grey += np.float32(0.6 * 0.23) * highlight * on_head
    alpha = _coverage(body_sd[:, :, 3:, 3:])
    keep = (1.0 - alpha) * (1.0 - np.float32(0.35) * shadow)
    out = canvas[..., _PAD:-_PAD, _PAD:-_PAD] * keep[:, :, None]
    out += (grey * alpha)[:, :, None]
    np.clip(out, 0.0, 1.0, out=out)
    out *= np.float32(255.0)
    out += np.float32(0.5)
    mask = labels[..., _PAD:-_PAD, _PAD:-_PAD]
    mask = np.where(alpha > 0.5, np.uint8(GRIPPER_ID), mask)  # the gripper occludes objects
    return np.ascontiguousarray(out.astype(np.uint8).transpose(0, 1, 3, 4, 2)), mask


def generate_videos(seed: int, split: str, start: int, count: int) -> dict[str, np.ndarray]:
    """Videos start .. start+count-1 of a split, with their ground-truth state.

    Returns `video` uint8 (N,30,64,64,3), `instance_mask` uint8 (N,30,64,64) (0 table,
    1 gripper and arm, 2 + k object k), `gripper_pos` float32 (N,30,2), `object_pos`
    float32 (N,30,3,2) (absent objects: 0) and `num_objects` int32 (N,).
    """
    params = [sample_video_params(seed, split, i) for i in range(start, start + count)]
    gripper, objects = simulate(params)  # cheap per video once vectorised over many
    chunks = [slice(i, i + _RENDER_CHUNK) for i in range(0, count, _RENDER_CHUNK)]
    pieces = [render(params[part], gripper[part], objects[part]) for part in chunks]
    return {
        "video": np.concatenate([video for video, _ in pieces]),
        "instance_mask": np.concatenate([mask for _, mask in pieces]),
        "gripper_pos": gripper,
        "object_pos": objects,
        "num_objects": np.array([p.num_objects for p in params], np.int32),
    }


def iterate_videos(seed: int, split: str, count: int) -> Iterator[dict[str, np.ndarray]]:
    """Yields one example dict per video, rendering chunks on 2 threads ahead of the consumer.

    numpy releases the GIL in the large array ops, so a second thread overlaps rendering
    with the consumer's serialisation and writing.
    """
    starts = list(range(0, count, _CHUNK))
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        futures = [
            pool.submit(generate_videos, seed, split, s, min(_CHUNK, count - s)) for s in starts[:2]
        ]
        for n, _ in enumerate(starts):
            chunk = futures[n].result()
            futures[n] = None  # release the chunk once consumed
            if n + 2 < len(starts):
                s = starts[n + 2]
                futures.append(pool.submit(generate_videos, seed, split, s, min(_CHUNK, count - s)))
            for i in range(len(chunk["video"])):
                yield {key: value[i] for key, value in chunk.items()}


@dataclasses.dataclass(eq=False)
class SyntheticPushingConfig(tfds.core.BuilderConfig):
    """Sizes and seed; they are part of the config name, so variants never share files."""

    num_train: int = 2000
    num_test: int = 256
    seed: int = 0


def config_name(num_train: int, num_test: int, seed: int) -> str:
    return f"train{num_train}_test{num_test}_seed{seed}"


_DEFAULT_CONFIG = SyntheticPushingConfig(
    name=config_name(2000, 256, 0),
    description="2000 train / 256 test videos, seed 0.",
)


def make_config(
    num_train: int = 2000, num_test: int = 256, seed: int = 0
) -> SyntheticPushingConfig:
    """The builder config for these sizes (the registered one for the defaults)."""
    for name, value in (("num_train", num_train), ("num_test", num_test)):
        if int(value) < 1:
            raise ValueError(f"synthetic.{name} must be >= 1, got {value}.")
    if int(seed) < 0:
        raise ValueError(f"synthetic.seed must be >= 0, got {seed}.")
    name = config_name(int(num_train), int(num_test), int(seed))
    if name == _DEFAULT_CONFIG.name:
        return _DEFAULT_CONFIG  # tfds rejects a new object named like a registered config
    return SyntheticPushingConfig(
        name=name,
        description=f"{num_train} train / {num_test} test videos, seed {seed}.",
        num_train=int(num_train),
        num_test=int(num_test),
        seed=int(seed),
    )


class SyntheticPushing(tfds.core.GeneratorBasedBuilder):
    """BAIR-like synthetic robot pushing: 30 frames of 64x64 RGB, generated locally."""

    name = "synthetic_pushing"
    # A new version is a new folder: copies prepared by older code are never read as this one.
    VERSION = tfds.core.Version("2.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release.",
        "2.0.0": "Adds `instance_mask`: per-pixel instance ids (0 table, 1 gripper and arm, "
        "2 + k object k), for object-centric metrics such as FG-ARI.",
    }
    BUILDER_CONFIGS = [_DEFAULT_CONFIG]

    def _info(self) -> tfds.core.DatasetInfo:
        tensor = tfds.features.Tensor
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    # BYTES: raw bytes in the Example (numpy-decodable); array_record's
                    # own compression shrinks them on disk.
                    "video": tensor(
                        shape=(NUM_FRAMES, SIZE, SIZE, 3),
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "instance_mask": tensor(
                        shape=(NUM_FRAMES, SIZE, SIZE),
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.BYTES,
                    ),
                    "gripper_pos": tensor(shape=(NUM_FRAMES, 2), dtype=np.float32),
                    "object_pos": tensor(shape=(NUM_FRAMES, MAX_OBJECTS, 2), dtype=np.float32),
                    "num_objects": tensor(shape=(), dtype=np.int32),
                }
            ),
            # Keep generation order: record i of a split is video i.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        cfg = self.builder_config
        return {
            "train": self._generate_examples(cfg.seed, "train", cfg.num_train),
            "test": self._generate_examples(cfg.seed, "test", cfg.num_test),
        }

    def _generate_examples(self, seed: int, split: str, count: int):
        for i, example in enumerate(iterate_videos(seed, split, count)):
            yield i, example
