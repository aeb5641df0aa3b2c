"""Finds the local Kinetics-600 clips and their classes (no decoding, no network).

Kinetics has no official download: users fetch the YouTube clips with their own tools,
which produce one of two layouts. Both are accepted (`source_dir` = the folder given as
`data.kinetics.source_dir`):

* standard:  <source_dir>/{train,validate,test}/<class name>/<youtube_id>_<start:06d>_<end:06d>.mp4
  (`val` / `validation` are accepted for `validate`); the class is the folder name.
* flat:      the clips anywhere under <source_dir> (e.g. <source_dir>/*.mp4), named as above,
  plus the official CSV annotations `{train,validate,test}.csv` (columns
  `label,youtube_id,time_start,time_end,split`; `val.csv` / `validation.csv` accepted) in
  <source_dir> or <source_dir>/annotations. Test CSVs without a label column give label -1.
  CSV rows whose clip file is absent are reported as skipped with reason "missing".

Splits are named as in tfds: train, validation, test. Class ids are the class names sorted
alphabetically (over every split), so they do not depend on which splits are present.
"""

from __future__ import annotations

import csv
import os

from lvt_jax.data import video_listing

SPLIT_DIRS = {"train": ("train",), "validation": ("validate", "val", "validation"),
              "test": ("test",)}
ANNOTATION_SUBDIRS = ("", "annotations")


class KineticsSourceNotFoundError(FileNotFoundError):
    """The local Kinetics clips are missing; the message says where to put them."""


Clip = video_listing.Clip
KineticsSource = video_listing.ClipListing  # root, layout ("standard" | "flat"), clips, class_names


def _missing_message(source_dir: str | None, detail: str) -> str:
    where = source_dir if source_dir else "<data.kinetics.source_dir>"
    return (
        f"Kinetics-600 source clips not found: {detail}\n"
        f"Put the downloaded clips in {where} in ONE of these layouts:\n"
        f"  {os.path.join(where, 'train', '<class name>', '<youtube_id>_<start>_<end>.mp4')}\n"
        f"  {os.path.join(where, 'validate', '<class name>', '...mp4')}   and/or\n"
        f"  {os.path.join(where, 'test', '<class name>', '...mp4')}   (the usual layout), or\n"
        f"  {os.path.join(where, '<youtube_id>_<start>_<end>.mp4')} (flat) with the official "
        f"annotations {os.path.join(where, 'annotations', '{train,validate,test}.csv')}.\n"
        "Set the config field data.kinetics.source_dir to that directory. Nothing is "
        "downloaded automatically; after the one-time conversion the clips are not needed."
    )


def locate_source(source_dir: str | os.PathLike | None) -> KineticsSource:
    """Lists every clip of every split present, or raises KineticsSourceNotFoundError (fast)."""
    if source_dir is None or str(source_dir) == "":
        raise KineticsSourceNotFoundError(
            _missing_message(None, "data.kinetics.source_dir is not set."))
    root = os.path.abspath(os.path.expanduser(os.fspath(source_dir)))
    if not os.path.isdir(root):
        raise KineticsSourceNotFoundError(
            _missing_message(root, f"directory {root} does not exist."))
    clips = _standard_layout(root)
    if clips:
        return _finish(root, "standard", clips)
    csvs = _annotation_files(root)
    if csvs:
        return _finish(root, "flat", _flat_layout(root, csvs))
    looked = [os.path.join(root, d) for dirs in SPLIT_DIRS.values() for d in dirs]
    raise KineticsSourceNotFoundError(_missing_message(
        root, f"no <split>/<class>/*.mp4 under any of {', '.join(looked)}, and no "
        f"annotation CSVs in {root} or {os.path.join(root, 'annotations')}."))


def _finish(root: str, layout: str, clips: dict[str, list[Clip]]) -> KineticsSource:
    clips = {s: sorted(c, key=lambda x: x.clip_id) for s, c in clips.items() if c}
    names = sorted({c.class_name for cs in clips.values() for c in cs if c.class_name})
    return KineticsSource(root=root, layout=layout, clips=clips, class_names=names)


def _standard_layout(root: str) -> dict[str, list[Clip]]:
    out: dict[str, list[Clip]] = {}
    for split, dirs in SPLIT_DIRS.items():
        for d in dirs:
            split_dir = os.path.join(root, d)
            if not os.path.isdir(split_dir):
                continue
            for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
                if not entry.is_dir():
                    continue
                for name in sorted(os.listdir(entry.path)):
                    if video_listing.is_video_file(name):
                        rel = os.path.join(d, entry.name, name)
                        out.setdefault(split, []).append(Clip(
                            clip_id=os.path.splitext(rel)[0].replace(os.sep, "/"),
                            path=rel, class_name=entry.name))
    return out


def _annotation_files(root: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for sub in ANNOTATION_SUBDIRS:
        for split, names in SPLIT_DIRS.items():
            for n in names:
                path = os.path.join(root, sub, f"{n}.csv")
                if split not in found and os.path.isfile(path):
                    found[split] = path
    return found


def clip_stem(youtube_id: str, start: str, end: str) -> str:
    """The usual clip file stem: <youtube_id>_<start:06d>_<end:06d>."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def _flat_layout(root: str, csvs: dict[str, str]) -> dict[str, list[Clip]]:
    files: dict[str, str] = {}
    for rel in video_listing.walk_files(root):
        name = os.path.basename(rel)
        if video_listing.is_video_file(name):
            files.setdefault(os.path.splitext(name)[0], rel)
    out: dict[str, list[Clip]] = {}
    for split, path in csvs.items():
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            need = {"youtube_id", "time_start", "time_end"}
            if not need <= set(reader.fieldnames or ()):
                raise ValueError(
                    f"{path}: expected the official Kinetics CSV columns "
                    f"label,youtube_id,time_start,time_end,split; got {reader.fieldnames}.")
            for row in reader:
                stem = clip_stem(row["youtube_id"], row["time_start"], row["time_end"])
                label = (row.get("label") or "").strip() or None
                out.setdefault(split, []).append(
                    Clip(clip_id=f"{split}/{stem}", path=files.get(stem), class_name=label))
    return out
