"""A folder of your own videos as a TFDS builder `video_folder` (array_record).

    --config.data.name=video_folder --config.data.video_folder.source_dir=DIR

Any file names, any container and codec FFmpeg decodes (`video_listing.VIDEO_EXTENSIONS`),
nested folders. Splits: `DIR/train/` and `DIR/test/` when both exist, else a deterministic
split by file path: the `round(test_fraction * N)` videos whose path hashes are smallest
are the test split (a file's split depends on its path and the folder's video count, not
on the order of listing, the machine or the time). Labels (`video_folder.labels=True`,
for class-conditional models): the first folder level below DIR (or below DIR/train/ and
DIR/test/), class ids = the class names sorted.

The preparation is the one Kinetics-600 uses (`video_build`: PyAV, centre crop, Lanczos
to data.image_size, native frame rate unless `fps`, at least `min_frames`, parallel,
restartable, bad files skipped and listed with the reason). Videos longer than
`max_frames` are stored as near-equal pieces (`<clip_id>@<first frame>`), so that reading
one frame or clip never loads a whole long video. Images and other files are listed as
skipped ("image", "not_video") without being opened; hidden files are ignored.

The prepared dataset is named after the folder, a hash of its absolute path and the split
and label settings, and the frame settings (e.g. `video_folder/my_videos_3fa2b1c4d5_64px_
native_min16_max256`), so two folders never share a prepared copy. A folder changed after
its preparation is reported (a warning naming the prepared copy to delete), not silently
mixed in.

Problems that leave no dataset fail in seconds with `VideoFolderError`, naming the folder,
the counts per reason and the fix: an empty folder, no video file, a test split left empty
by the split fraction (all before decoding); no readable video, or every video shorter
than min_frames, in a split (after decoding, which is fast for such files).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re

import tensorflow_datasets as tfds

from lvt_jax.data import video_build, video_listing

NAME = "video_folder"
SPLITS = ("train", "test")
SECTION = "video_folder"
FIELD = f"data.{SECTION}"

log = logging.getLogger(__name__)


class VideoFolderError(ValueError):
    """The folder cannot make a dataset; the message names it, the counts and the fix."""


# --------------------------------------------------------------------------- listing


def resolve_root(source_dir: str | os.PathLike | None) -> str:
    """The absolute folder, or VideoFolderError naming the config field."""
    if source_dir is None or str(source_dir) == "":
        raise VideoFolderError(
            f"{FIELD}.source_dir is not set: pass --config.{FIELD}.source_dir=DIR, the "
            "folder holding your videos (any names, nested folders allowed; DIR/train/ and "
            "DIR/test/ to choose the splits yourself).")
    root = os.path.abspath(os.path.expanduser(os.fspath(source_dir)))
    if not os.path.isdir(root):
        raise VideoFolderError(f"{FIELD}.source_dir={root} is not a directory; set it to the "
                               "folder holding your videos.")
    return root


def path_hash(rel: str) -> str:
    """The split key of a file: sha256 of its path relative to the folder."""
    return hashlib.sha256(rel.encode("utf-8")).hexdigest()


def _kind(rel: str) -> str:
    name = os.path.basename(rel)
    if video_listing.is_video_file(name):
        return "video"
    return "image" if video_listing.is_image_file(name) else "not_video"


def _counts(kinds: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k in kinds:
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


def _examples(rels: list[str], limit: int = 3) -> str:
    shown = ", ".join(rels[:limit])
    return shown + (f", ... ({len(rels)} in all)" if len(rels) > limit else "")


_FORMATS = ("Video files are recognised by their extension: "
            + " ".join(video_listing.VIDEO_EXTENSIONS) + " (any codec FFmpeg decodes). A "
            "folder of frames is not read as a video: make it one first, e.g. `ffmpeg -i "
            "frames/%05d.png clip.mp4`.")


def locate_folder(source_dir: str | os.PathLike | None, test_fraction: float = 0.1,
                  labels: bool = False) -> video_listing.ClipListing:
    """Lists the folder into splits (no decoding), or raises VideoFolderError in seconds."""
    root = resolve_root(source_dir)
    if not 0.0 <= float(test_fraction) < 1.0:
        raise VideoFolderError(f"{FIELD}.test_fraction={test_fraction} must lie in [0, 1).")
    files = video_listing.walk_files(root)
    if not files:
        raise VideoFolderError(
            f"{root} holds no files: put your videos in it (any names, nested folders "
            f"allowed) and set {FIELD}.source_dir to it. {_FORMATS}")
    kinds = {rel: _kind(rel) for rel in files}
    videos = [rel for rel in files if kinds[rel] == "video"]
    if not videos:
        others = [rel for rel in files if kinds[rel] != "video"]
        raise VideoFolderError(
            f"{root} holds no video file: {len(files)} files, by kind "
            f"{_counts(list(kinds.values()))} (e.g. {_examples(others)}). {_FORMATS}")
    has = {d: os.path.isdir(os.path.join(root, d)) for d in SPLITS}
    if has["train"] != has["test"]:
        there, missing = ("train", "test") if has["train"] else ("test", "train")
        raise VideoFolderError(
            f"{root} has {there}/ but no {missing}/: create {os.path.join(root, missing)} "
            f"with the {missing} videos, or rename {there}/ to split the folder by path "
            f"({FIELD}.test_fraction={test_fraction}).")
    layout = "split_folders" if has["train"] else "by_path"
    notes: dict = {"test_fraction": float(test_fraction), "labels": bool(labels),
                   "num_files": len(files), "files_sha256": files_digest(root, files)}
    placed: dict[str, str] = {}  # rel path -> split
    inner = _inside_splits(files, placed, notes) if layout == "split_folders" else {
        rel: rel for rel in files}  # rel path -> path below the split folder (or root)
    skip: dict[str, tuple[str, str]] = {}  # rel path -> (reason, detail), before decoding
    for rel in inner:
        if kinds[rel] != "video":
            ext = os.path.splitext(rel)[1] or "(none)"
            skip[rel] = (kinds[rel],
                         f"extension {ext}: {video_listing.LISTING_REASONS[kinds[rel]]}")
        elif labels and "/" not in inner[rel]:
            skip[rel] = ("no_class", f"directly in the {placed.get(rel, 'top')} folder; with "
                         f"{FIELD}.labels=True every video must be inside a class folder")
    usable = [rel for rel in inner if rel not in skip]
    if layout == "by_path":
        _split_by_path(usable, list(inner), test_fraction, placed)
    clips: dict[str, list[video_listing.Clip]] = {s: [] for s in SPLITS}
    for rel in inner:
        reason, detail = skip.get(rel, (None, ""))
        cls = inner[rel].split("/", 1)[0] if labels and "/" in inner[rel] else None
        clips[placed[rel]].append(video_listing.Clip(
            clip_id=rel, path=rel, class_name=cls, skip=reason, detail=detail))
    class_names = sorted({c.class_name for cs in clips.values() for c in cs
                          if c.class_name is not None and c.skip is None})
    if labels and not class_names:
        raise VideoFolderError(
            f"{FIELD}.labels=True but no video of {root} is inside a class folder "
            f"({len(usable)} usable, skipped {_counts([r for r, _ in skip.values()])}): put "
            f"each class's videos in {os.path.join(root, '<class name>')}/ (or "
            f"{os.path.join(root, 'train', '<class name>')}/ and test/<class name>/), or set "
            f"{FIELD}.labels=False.")
    for split in SPLITS:
        if not any(c.skip is None for c in clips[split]):
            raise VideoFolderError(_empty_split_message(root, layout, split, clips[split],
                                                        len(usable), test_fraction))
    return video_listing.ClipListing(
        root=root, layout=layout, class_names=class_names, notes=notes,
        clips={s: sorted(c, key=lambda x: x.clip_id) for s, c in clips.items()})


def _inside_splits(files: list[str], placed: dict[str, str], notes: dict) -> dict[str, str]:
    """Split-folder layout: the files below train/ and test/ (-> their path below it);
    the others are reported in the notes and a warning."""
    inner, outside = {}, []
    for rel in files:
        top, _, rest = rel.partition("/")
        if top in SPLITS and rest:
            placed[rel], inner[rel] = top, rest
        else:
            outside.append(rel)
    if outside:
        notes["outside_splits"] = outside
        log.warning("%s: %d files outside train/ and test/ are not used (e.g. %s).",
                    NAME, len(outside), _examples(outside))
    return inner


def _split_by_path(usable: list[str], every: list[str], test_fraction: float,
                   placed: dict[str, str]) -> None:
    """Test = the round(f * N) usable videos with the smallest path hashes; every other
    file falls on the side of that cut its own hash lies on (for the report only)."""
    ranked = sorted(usable, key=path_hash)
    n_test = int(round(float(test_fraction) * len(ranked)))
    cut = path_hash(ranked[n_test - 1]) if n_test else None
    for rel in every:
        placed[rel] = "test" if cut is not None and path_hash(rel) <= cut else "train"


def _empty_split_message(root: str, layout: str, split: str, clips: list, usable: int,
                         test_fraction: float) -> str:
    counts = _counts([c.skip for c in clips if c.skip])
    if layout == "split_folders":
        where = os.path.join(root, split)
        return (f"{where} holds no usable video ({len(clips)} files, skipped by reason "
                f"{counts}): put the {split} videos there (any names, nested folders "
                f"allowed). {_FORMATS}")
    if split == "test":
        need = 0.5 / max(usable, 1)
        return (f"the test split of {root} is empty: {FIELD}.test_fraction={test_fraction} "
                f"of its {usable} usable videos rounds to 0. Set --config.{FIELD}."
                f"test_fraction={min(2 * need, 0.5):.3g} or more (at least one test video), "
                f"or choose the split yourself: {os.path.join(root, 'train')}/ and "
                f"{os.path.join(root, 'test')}/.")
    return (f"the train split of {root} is empty: {FIELD}.test_fraction={test_fraction} puts "
            f"all {usable} usable videos into the test split; lower it, or add videos.")


def files_digest(root: str, files: list[str]) -> str:
    """What the prepared copy was made from: every file's path and size."""
    sizes = []
    for rel in files:
        try:
            sizes.append(os.path.getsize(os.path.join(root, rel)))
        except OSError:
            sizes.append(-1)
    return hashlib.sha256(json.dumps([files, sizes]).encode()).hexdigest()


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(eq=False)
class VideoFolderConfig(video_build.VideoBuildConfig):
    """The frame settings plus the folder and how it is split and labelled."""

    source_root: str = ""
    test_fraction: float = 0.1
    labels: bool = False


def dataset_key(root: str, test_fraction: float, labels: bool) -> str:
    """Folder name + a hash of its absolute path and the split / label settings."""
    slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(root.rstrip("/")).lower()).strip("_")
    digest = hashlib.sha256(json.dumps(
        [root, round(float(test_fraction), 6), bool(labels)]).encode()).hexdigest()[:10]
    return f"{slug[:40] or 'videos'}_{digest}"


def make_config(source_dir: str | os.PathLike | None, *, size: int = 64,
                fps: float | None = None, min_frames: int = 16, max_frames: int | None = 256,
                test_fraction: float = 0.1, labels: bool = False
                ) -> VideoFolderConfig:
    """The builder config: which folder, how it is split and labelled, and the frames."""
    root = resolve_root(source_dir)
    video_build.check_frame_settings(SECTION, size, fps, min_frames, max_frames)
    if not 0.0 <= float(test_fraction) < 1.0:
        raise VideoFolderError(f"{FIELD}.test_fraction={test_fraction} must lie in [0, 1).")
    name = (f"{dataset_key(root, test_fraction, labels)}_"
            f"{video_build.frames_name(size, fps, min_frames, max_frames)}")
    return VideoFolderConfig(
        name=name, description=f"{root}: {size}x{size}, fps={fps or 'native'}, >= "
        f"{min_frames} frames, test_fraction={test_fraction}, labels={labels}.",
        size=int(size), fps=None if fps is None else float(fps), min_frames=int(min_frames),
        max_frames=int(max_frames) if max_frames else None, source_root=root,
        test_fraction=float(test_fraction), labels=bool(labels))


# --------------------------------------------------------------------------- builder


class VideoFolder(video_build.LocalVideoBuilder):
    """Your own videos: every video file below a folder, at 64x64 (data.image_size)."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: any folder of videos, shared preparation."}
    SPLITS = SPLITS
    SECTION = SECTION

    def locate(self) -> video_listing.ClipListing:
        c = self.builder_config
        return locate_folder(self.source_dir or c.source_root, c.test_fraction, c.labels)

    def check_splits(self, listing: video_listing.ClipListing, summary: dict,
                     skipped: list[tuple]) -> None:
        """Both splits need a usable video; else the counts per reason and the fixes."""
        empty = [s for s in SPLITS if not summary.get(s, {}).get("written")]
        if not empty:
            return
        table = os.path.join(self.work_dir, video_build.SKIPPED_FILE)
        video_build.write_skipped(table, skipped)
        c = self.builder_config
        fixes = {
            "too_short": f"videos shorter than {FIELD}.min_frames={c.min_frames} frames"
                         + ("" if c.fps is None else f" at {FIELD}.fps={c.fps:g}") + ": use "
                         f"longer videos, or lower {FIELD}.min_frames together with "
                         "data.clip_length (clips must fit in the shortest video)"
                         + ("" if c.fps is None else f", or raise {FIELD}.fps"),
            "decode_error": "files FFmpeg cannot decode: check that they play, or re-encode "
                            "them (e.g. `ffmpeg -i in.ext out.mp4`)",
            "truncated": "files that stop early (incomplete downloads or copies): copy them "
                         "again or re-encode them",
            "image": "images are not videos: " + _FORMATS,
            "not_video": "unknown extensions: " + _FORMATS,
            "no_class": f"with {FIELD}.labels=True put every video in a class folder",
        }
        lines = [f"{NAME}: the {' and '.join(empty)} split{'s' if len(empty) > 1 else ''} of "
                 f"{listing.root} {'have' if len(empty) > 1 else 'has'} no usable video "
                 f"after decoding:"]
        reasons: set[str] = set()
        for split in empty:
            s = summary.get(split, {"clips": 0, "skipped": {}})
            lines.append(f"  {split}: {s['clips']} files, skipped by reason {s['skipped']}")
            reasons |= set(s["skipped"])
        lines += [f"  fix: {fixes[r]}" for r in sorted(reasons) if r in fixes]
        lines.append(f"  every skipped file and the decoder's message: {table}")
        lines.append(f"  (after changing the folder or the settings, delete {self.work_dir}: "
                     "its partial build cannot be reused)")
        raise VideoFolderError("\n".join(lines))

    def check_prepared(self) -> None:
        """Warns (once per process and copy) when the folder changed after preparation."""
        root = self.builder_config.source_root
        key = (os.fspath(self.data_path), root)
        if key in _CHECKED or not os.path.isdir(root):
            return
        _CHECKED.add(key)
        try:
            recorded = self.build_summary().get("files_sha256")
        except OSError:
            return
        files = video_listing.walk_files(root)
        if recorded and files_digest(root, files) != recorded:
            log.warning(
                "%s: %s changed after it was prepared (%d files now, %d then); this run "
                "uses the prepared copy %s. To include the changes, delete that directory "
                "(and the workdir's codes/ if stage 1 has encoded it) and rerun.", NAME, root,
                len(files), self.build_summary().get("num_files", -1),
                os.fspath(self.data_path))


_CHECKED: set = set()
