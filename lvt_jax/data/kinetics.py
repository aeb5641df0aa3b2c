"""Kinetics-600 as a TFDS builder `kinetics600` (array_record), prepared from local clips.

The dataset is ~500k clips that each need a video decode, and a few percent of real clips
are broken: the parallel, restartable preparation with its report of skipped clips is the
one every local-video dataset shares (`lvt_jax.data.video_build`, described there). What
is Kinetics' own: the listing (`kinetics_source.locate_source`: the standard
`<split>/<class>/*.mp4` layout or flat files + official CSVs; CSV rows without a file are
reported as "missing"), the three splits train / validation / test, and that the dataset
is named by its frame settings alone (the clips are the same wherever they are stored).

Features per clip: `video` uint8 [T, size, size, 3] (T varies), `label` (ClassLabel: the
class names sorted; -1 for unlabelled clips), `clip_id` (text, e.g.
`train/abseiling/<youtube_id>_<start>_<end>`), `fps` float32; `index-<split>.npz` beside
the shards holds every clip's `num_frames` and `label`.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from lvt_jax.data import kinetics_source, video_build
from lvt_jax.data.video_build import SKIPPED_FILE, SUMMARY_FILE  # noqa: F401  (re-exported)

NAME = "kinetics600"
SPLITS = ("train", "validation", "test")

# The frame settings as a builder config (size, fps, min_frames); one class for both datasets.
Kinetics600Config = video_build.VideoBuildConfig
config_name = video_build.frames_name

_DEFAULT_CONFIG = Kinetics600Config(
    name=config_name(64, None, 16),
    description="64x64, native frame rate, clips of at least 16 frames (the paper).",
)


def make_config(size: int = 64, fps: float | None = None,
                min_frames: int = 16) -> Kinetics600Config:
    """The builder config for these settings (the registered one for the defaults)."""
    video_build.check_frame_settings("kinetics", size, fps, min_frames)
    name = config_name(size, fps, min_frames)
    if name == _DEFAULT_CONFIG.name:
        return _DEFAULT_CONFIG  # tfds rejects a new object named like a registered config
    return Kinetics600Config(
        name=name, description=f"{size}x{size}, fps={fps or 'native'}, >= {min_frames} frames.",
        size=int(size), fps=None if fps is None else float(fps), min_frames=int(min_frames))


class Kinetics600(video_build.LocalVideoBuilder):
    """Kinetics-600 clips at 64x64, all frames, with class labels; prepared from local files."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: local clips, PyAV, parallel restartable build."}
    BUILDER_CONFIGS = [_DEFAULT_CONFIG]
    SPLITS = SPLITS
    SECTION = "kinetics"
    HOMEPAGE = "https://github.com/cvdfoundation/kinetics-dataset"

    def locate(self) -> video_build.ClipListing:
        return kinetics_source.locate_source(self.source_dir)
