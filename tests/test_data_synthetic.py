"""Tests for the procedural synthetic_pushing dataset and its tfds builder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lvt_jax.data import synthetic_pushing as sp


@pytest.fixture(scope="module")
def videos() -> dict[str, np.ndarray]:
    return sp.generate_videos(seed=0, split="train", start=0, count=12)


def test_shapes_dtypes_and_ranges(videos):
    assert videos["video"].shape == (12, 30, 64, 64, 3)
    assert videos["video"].dtype == np.uint8
    assert videos["instance_mask"].shape == (12, 30, 64, 64)
    assert videos["instance_mask"].dtype == np.uint8
    assert videos["gripper_pos"].shape == (12, 30, 2) and videos["gripper_pos"].dtype == np.float32
    assert videos["object_pos"].shape == (12, 30, 3, 2) and videos["object_pos"].dtype == np.float32
    assert set(videos["num_objects"].tolist()) <= {1, 2, 3}
    assert (videos["gripper_pos"] >= 0).all() and (videos["gripper_pos"] <= 64).all()
    for v, n in enumerate(videos["num_objects"]):
        present = videos["object_pos"][v, :, :n]
        assert (present > 0).all() and (present < 64).all(), "objects must stay on the table"
        assert (videos["object_pos"][v, :, n:] == 0).all()
    # Not a constant image: a textured table plus dark gripper and coloured objects.
    assert videos["video"].std() > 10
    assert videos["video"].min() < 80 and videos["video"].max() > 150


def test_deterministic_from_seed_and_independent_of_chunking(videos):
    again = sp.generate_videos(seed=0, split="train", start=0, count=12)
    np.testing.assert_array_equal(videos["video"], again["video"])
    # Video i does not depend on which other videos are generated with it.
    alone = sp.generate_videos(seed=0, split="train", start=5, count=2)
    np.testing.assert_array_equal(alone["video"], videos["video"][5:7])
    np.testing.assert_array_equal(alone["gripper_pos"], videos["gripper_pos"][5:7])
    np.testing.assert_array_equal(alone["instance_mask"], videos["instance_mask"][5:7])
    other_seed = sp.generate_videos(seed=1, split="train", start=0, count=12)
    assert not np.array_equal(other_seed["video"], videos["video"])
    other_split = sp.generate_videos(seed=0, split="test", start=0, count=12)
    assert not np.array_equal(other_split["video"], videos["video"])


def test_gripper_moves_smoothly(videos):
    pos = videos["gripper_pos"]
    step = np.linalg.norm(np.diff(pos, axis=1), axis=-1)  # (V, T-1) px per frame
    travel = step.sum(axis=1)
    assert (travel > 10).all(), f"every gripper should travel: {travel}"
    assert step.max() < 10, "smooth paths: no teleporting"
    # The frames change where the gripper moves.
    frame_change = np.abs(np.diff(videos["video"].astype(np.int16), axis=1)).mean(axis=(2, 3, 4))
    assert (frame_change.mean(axis=1) > 0.5).all()


def test_objects_get_pushed_and_do_not_overlap_the_gripper(videos):
    obj, grip, counts = videos["object_pos"], videos["gripper_pos"], videos["num_objects"]
    moved, clear = 0, []
    for v, n in enumerate(counts):
        params = sp.sample_video_params(0, "train", v)
        displacement = np.linalg.norm(obj[v, -1, :n] - obj[v, 0, :n], axis=-1)
        moved += int((displacement > 2).sum())
        # Kinematic pushing: objects are kept out from under the gripper head (rare
        # exceptions where two objects and the gripper jam together).
        dist = np.linalg.norm(obj[v, :, :n] - grip[v, :, None], axis=-1)
        min_dist = sp._GRIPPER_RADIUS + params.object_radius[:n]
        clear.append((dist > min_dist - 1.0).ravel())
    assert np.concatenate(clear).mean() > 0.98
    assert moved >= 4, "objects must actually be pushed"
    # Objects only move when pushed: most frame-to-frame object steps are exactly zero.
    obj_step = np.linalg.norm(np.diff(obj, axis=1), axis=-1)
    assert (obj_step == 0).mean() > 0.5


def _independent_bodies(
    params: sp.VideoParams,
    gripper_pos: np.ndarray,
    object_pos: np.ndarray,
    shift: tuple[float, float] = (0.0, 0.0),
) -> list[tuple[int, np.ndarray]]:
    """(id, signed distance (T, 64, 64)) of every body of one video, in drawing order.

    Recomputed here in float64 on whole frames from the positions (T, 2) / (T, 3, 2) and
    the video's parameters, independently of the renderer's windows and separable grids:
    the arm as a band around the segment from its anchor (ax, -8) to the gripper centre.
    shift (x, y) px moves every body, for where its shadow falls.
    """
    c = np.arange(64) + 0.5
    x, y = c[None, None, :] - shift[0], c[None, :, None] - shift[1]
    bodies = []
    for k in range(params.num_objects):
        centre = object_pos[:, k].astype(np.float64)
        dx, dy = x - centre[:, 0, None, None], y - centre[:, 1, None, None]
        r = params.object_radius[k]
        if params.object_is_box[k]:
            sd = np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r
        else:
            sd = np.hypot(dx, dy) - r
        bodies.append((2 + k, sd))
    g = gripper_pos.astype(np.float64)[:, :, None, None]  # (T, 2, 1, 1)
    a = np.array([params.arm_anchor_x, -8.0])[None, :, None, None]
    seg = g - a
    t = ((x - a[:, 0]) * seg[:, 0] + (y - a[:, 1]) * seg[:, 1]) / (seg**2).sum(axis=1)
    t = np.clip(t, 0.0, 1.0)
    arm = np.hypot(x - a[:, 0] - t * seg[:, 0], y - a[:, 1] - t * seg[:, 1]) - sp._ARM_HALF_WIDTH
    head = np.hypot(x - g[:, 0], y - g[:, 1]) - sp._GRIPPER_RADIUS
    bodies.append((1, np.minimum(arm, head)))
    return bodies


def _bodies_of(v: int, videos: dict[str, np.ndarray], shift=(0.0, 0.0)):
    params = sp.sample_video_params(0, "train", v)
    return _independent_bodies(params, videos["gripper_pos"][v], videos["object_pos"][v], shift)


def _expected_mask(bodies: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The front-most body covering a pixel by more than half (coverage 0.5 - sd > 0.5:
    sd < 0), in drawing order; and where |sd| ~ 0 (float32 and float64 may disagree)."""
    expected = np.zeros(bodies[0][1].shape, np.uint8)
    tie = np.zeros(expected.shape, bool)
    for body_id, sd in bodies:
        expected[sd < 0] = body_id
        tie |= np.abs(sd) < 1e-3
    assert tie.mean() < 1e-3
    return expected, tie


def test_instance_mask_matches_the_rendered_bodies(videos):
    occluded = 0
    for v, n in enumerate(videos["num_objects"]):
        mask = videos["instance_mask"][v]
        bodies = _bodies_of(v, videos)
        expected, tie = _expected_mask(bodies)
        np.testing.assert_array_equal(mask[~tie], expected[~tie])
        occluded += sum(int(((sd < 0) & (mask == 1)).sum()) for i, sd in bodies if i >= 2)
        # Ids: table, gripper and this video's objects only; absent objects never appear.
        assert set(np.unique(mask).tolist()) <= {0, 1} | set(range(2, 2 + n))
        assert (mask == 1).any(axis=(1, 2)).all(), "the arm is in every frame"
        for body_id in range(2, 2 + n):  # every visible object is labelled in its frames
            visible = ((expected == body_id) & ~tie).any(axis=(1, 2))
            np.testing.assert_array_equal((mask == body_id).any(axis=(1, 2))[visible], True)
    assert occluded > 0, "the gripper must occlude objects somewhere in these videos"


def test_instance_mask_later_objects_and_the_gripper_occlude_earlier_bodies():
    # Overlaps between objects are rare in simulated videos (they push each other apart),
    # so this scene is built by hand: three overlapping objects, the gripper over them.
    params = dataclasses.replace(
        sp.sample_video_params(0, "train", 0),
        num_objects=3,
        object_radius=np.array([6.0, 5.0, 6.5]),
        object_is_box=np.array([True, False, True]),
        object_color=sp._PALETTE[:3].copy(),
    )
    t = np.arange(sp.NUM_FRAMES)[:, None]
    objects = np.stack([[30.0, 30.0] + 0 * t, [36.0, 31.0] + 0.1 * t, [33.0, 37.0] - 0.1 * t], 1)
    gripper = np.concatenate([20.0 + 0.8 * t, 40.0 + 0 * t], axis=1)  # sweeps across them
    video, mask = sp.render(
        [params], gripper[None].astype(np.float32), objects[None].astype(np.float32)
    )
    assert video.shape == (1, 30, 64, 64, 3) and mask.shape == (1, 30, 64, 64)
    bodies = _independent_bodies(params, gripper, objects)
    expected, tie = _expected_mask(bodies)
    np.testing.assert_array_equal(mask[0][~tie], expected[~tie])
    in0, in1, in2, in_gripper = (sd < 0 for _, sd in bodies)
    assert (mask[0][in0 & in1] == 3).any() and (mask[0][in1 & in2] == 4).any()
    assert (mask[0][in2 & in_gripper] == 1).any()


def test_instance_mask_labels_have_the_bodies_colours(videos):
    """Each label's pixels look like its body: object colour up to shading, dark grey
    gripper, bare table where no body or shadow reaches."""
    counts = np.zeros(3, int)
    for v in range(len(videos["video"])):
        params = sp.sample_video_params(0, "train", v)
        frames = videos["video"][v].astype(np.float64) / 255
        mask = videos["instance_mask"][v]
        bodies = _bodies_of(v, videos)
        sds = np.stack([sd for _, sd in bodies])  # (B, T, 64, 64)
        for b, (body_id, sd) in enumerate(bodies):
            others = np.delete(sds, b, axis=0)
            # Fully covered by this body and untouched by any other's edge.
            clean = (mask == body_id) & (sd <= -0.5) & (others >= 0.5).all(axis=0)
            pixels = frames[clean]  # (P, 3)
            if body_id == 1:  # flat grey 0.22..0.36: the arm, the head and its highlight
                assert (pixels.max(axis=1) - pixels.min(axis=1) < 1.5 / 255).all()
                assert ((pixels > 0.21) & (pixels < 0.37)).all()
                counts[1] += len(pixels)
                continue
            colour = params.object_color[body_id - 2].astype(np.float64)
            pixels = pixels[(pixels < 1.0).all(axis=1)]  # bright colours clip when lit
            scale = pixels @ colour / (colour @ colour)  # shading and shadows scale all of RGB
            assert ((scale > 0.25) & (scale < 1.15)).all()
            np.testing.assert_allclose(pixels, scale[:, None] * colour, atol=3 / 255)
            counts[2] += len(pixels)
        # Table: no body touches the pixel (sd < 0.5) and no shadow falls on it: objects
        # cast theirs 1.5 px right and 2 down (sd < 0.75), the gripper 2 right and 3 down
        # (sd < 1); the bounds here are a little wider.
        reach = (sds < 0.5).any(axis=0)
        for _, sd in _bodies_of(v, videos, shift=(1.5, 2.0))[:-1]:
            reach |= sd < 1.0
        reach |= _bodies_of(v, videos, shift=(2.0, 3.0))[-1][1] < 1.25
        bare = (mask == 0) & ~reach
        table = (params.background * np.float32(255) + np.float32(0.5)).astype(np.uint8)
        table = np.broadcast_to(table, frames.shape)
        np.testing.assert_array_equal(videos["video"][v][bare], table[bare])
        counts[0] += int(bare.sum())
    assert (counts > 1000).all(), counts  # each check saw plenty of pixels


def test_object_colours_are_distinct_within_a_video():
    for i in range(20):
        params = sp.sample_video_params(3, "train", i)
        colours = params.object_color[: params.num_objects]
        assert len({tuple(c) for c in colours.tolist()}) == params.num_objects


def test_table_texture_is_smooth_enough_for_a_4x_vqvae():
    # Proxy for "a VQ-VAE with 4x downsampling can reach >= 28 dB": the table survives
    # 4x4 average pooling plus nearest upsampling at well above that.
    tables = np.stack([sp.sample_video_params(0, "train", i).background for i in range(16)]) * 255
    pooled = tables.reshape(16, 16, 4, 16, 4, 3).mean(axis=(2, 4))
    restored = pooled.repeat(4, axis=1).repeat(4, axis=2)
    psnr = 10 * np.log10(255**2 / np.mean((restored - tables) ** 2))
    assert psnr > 30, psnr
    # ... and it is a texture, not a flat colour.
    assert tables.std(axis=(1, 2)).mean() > 3


def test_config_names_separate_sizes_and_seeds():
    assert sp.make_config() is sp.make_config(2000, 256, 0)
    names = {
        sp.make_config(12, 6, 0).name,
        sp.make_config(13, 6, 0).name,
        sp.make_config(12, 6, 1).name,
    }
    assert len(names) == 3
    with pytest.raises(ValueError, match="num_train"):
        sp.make_config(0, 6, 0)


def test_builder_writes_array_record_readable_without_tensorflow(tmp_path):
    import sys

    builder = sp.SyntheticPushing(
        config=sp.make_config(5, 3, 7), data_dir=str(tmp_path), file_format="array_record"
    )
    builder.download_and_prepare()
    assert "train5_test3_seed7" in str(builder.data_path)
    assert list(builder.data_path.glob("*.array_record*"))
    sources = builder.as_data_source()
    assert len(sources["train"]) == 5 and len(sources["test"]) == 3
    expected = sp.generate_videos(7, "test", 0, 3)
    assert builder.data_path.name == "2.0.0"
    for i in range(3):
        example = sources["test"][i]
        assert example["video"].dtype == np.uint8
        np.testing.assert_array_equal(example["video"], expected["video"][i])
        assert example["instance_mask"].dtype == np.uint8
        np.testing.assert_array_equal(example["instance_mask"], expected["instance_mask"][i])
        np.testing.assert_array_equal(example["gripper_pos"], expected["gripper_pos"][i])
        assert int(example["num_objects"]) == expected["num_objects"][i]
    assert "tensorflow" not in sys.modules
