"""What a local-video dataset is made of, before any decoding: the listed files.

Light on purpose (no tfds, no PyAV): a source can be listed, and its problems reported,
in seconds, before anything is prepared or compiled. The preparation that consumes a
listing is `lvt_jax.data.video_build`.
"""

from __future__ import annotations

import dataclasses
import os

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".3gp", ".ts", ".mts", ".m2ts", ".ogv", ".mxf", ".vob")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".heic", ".gif")

# Reasons known from the listing alone (no decoding); see video_build.REASONS for all.
LISTING_REASONS = {
    "image": "an image file, not a video",
    "not_video": "not a video file (its extension is not one of the video formats read)",
    "no_class": "class labels are on but the file is not inside a class folder",
}


def is_video_file(name: str) -> bool:
    return name.lower().endswith(VIDEO_EXTENSIONS) and not name.startswith(".")


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


@dataclasses.dataclass(frozen=True)
class Clip:
    """One source file: `path` relative to the listing's root (None: listed but missing).

    `skip`: a reason (key of LISTING_REASONS, or "missing") known before decoding, with
    `detail`; the build reports such a clip as skipped without opening it.
    """

    clip_id: str  # unique within the dataset, e.g. "train/abseiling/abc_000010_000020"
    path: str | None
    class_name: str | None  # None: unlabelled
    skip: str | None = None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class ClipListing:
    """What a builder prepares: the clips of every split, sorted by clip_id."""

    root: str
    layout: str
    clips: dict[str, list[Clip]]  # tfds split name -> clips
    class_names: list[str]  # sorted; the label of class_names[i] is i
    notes: dict = dataclasses.field(default_factory=dict)  # extra entries of the report


def walk_files(root: str) -> list[str]:
    """Every non-hidden file below `root` (paths relative to it, '/'-separated, sorted);
    hidden files and folders (.DS_Store, ._clip.mp4, .git/) are not part of a dataset."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = os.path.relpath(dirpath, root)
        for name in filenames:
            if not name.startswith("."):
                out.append(name if rel == "." else os.path.join(rel, name).replace(os.sep, "/"))
    return sorted(out)
