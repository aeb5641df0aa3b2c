"""BAIR robot pushing ("softmotion30_44k") as a TFDS builder, prepared from local files.

Why: the original release is one 30 GB tar of TFRecords; this project reads it without
TensorFlow and without any network access. Pass `source_dir` (from the config field
`data.bair_source_dir`) naming a directory holding either

    <source_dir>/bair_robot_pushing_dataset_v0.tar              (the original archive), or
    <source_dir>/softmotion30_44k/{train,test}/*.tfrecords     (the archive, extracted)

and `download_and_prepare()` converts it once into array_record files that
`tfds.data_source` / `builder.as_data_source()` read with numpy only. Nothing is ever
downloaded: missing files raise `BairSourceNotFoundError` within seconds, saying where
to put what.

Original format, for each frame t in 0..29 of a video (one `tf.train.Example`):
`{t}/image_aux1/encoded` and `{t}/image_main/encoded` raw 64x64x3 uint8 bytes,
`{t}/action` 4 floats, `{t}/endeffector_pos` 3 floats. Camera `image_aux1` is the one
the video-prediction literature (and LVT) uses; it is stored as `video`.

Preparation is restartable: tfds writes into a temporary `incomplete.*` directory and
renames it only when every split is complete, so an interrupted run leaves no partial
dataset and the next call simply starts the conversion again.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tarfile
from typing import BinaryIO, Iterator

import numpy as np
import tensorflow_datasets as tfds

from lvt_jax.data import tfrecord

ARCHIVE_NAME = "bair_robot_pushing_dataset_v0.tar"
EXTRACTED_DIR = "softmotion30_44k"
NUM_FRAMES = 30
SIZE = 64
SPLITS = ("train", "test")

_MEMBER_RE = re.compile(rf"(?:^|/){EXTRACTED_DIR}/(train|test)/([^/]+\.tfrecords?)$")


class BairSourceNotFoundError(FileNotFoundError):
    """The local BAIR files are missing; the message says where to put them."""


def _natural_key(name: str) -> tuple:
    """Sorts traj_256_to_511 after traj_0_to_255 (numeric, not lexicographic)."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


@dataclasses.dataclass(frozen=True)
class BairSource:
    """Where the original BAIR TFRecords are: an archive, or extracted split folders."""

    archive: str | None  # path to the .tar, or None
    files: dict[str, list[str]]  # split -> tfrecord paths (extracted) or member names (tar)

    def open_records(self, split: str) -> Iterator[tuple[str, int, bytes]]:
        """Yields (file name, record index, serialised Example) in canonical order."""
        if self.archive is None:
            for path in self.files[split]:
                for i, record in enumerate(tfrecord.iter_records(path)):
                    yield os.path.basename(path), i, record
            return
        with tarfile.open(self.archive, "r:") as tar:
            members = {m.name: m for m in tar.getmembers()}
            for name in self.files[split]:
                stream: BinaryIO | None = tar.extractfile(members[name])
                if stream is None:
                    raise BairSourceNotFoundError(f"{self.archive}: {name} is not a regular file.")
                with stream:
                    label = f"{self.archive}:{name}"
                    for i, record in enumerate(tfrecord.iter_records(stream, name=label)):
                        yield os.path.basename(name), i, record


def _missing_message(source_dir: str | None, detail: str) -> str:
    where = source_dir if source_dir else "<data.bair_source_dir>"
    return (
        f"BAIR robot pushing source files not found: {detail}\n"
        f"Put ONE of these in {where}:\n"
        f"  {os.path.join(where, ARCHIVE_NAME)}   (the original archive, ~30 GB), or\n"
        f"  {os.path.join(where, EXTRACTED_DIR, 'train', '*.tfrecords')} and\n"
        f"  {os.path.join(where, EXTRACTED_DIR, 'test', '*.tfrecords')}   (the archive "
        "extracted with `tar xf`).\n"
        "Set the config field data.bair_source_dir to that directory. Nothing is downloaded "
        "automatically; after the one-time conversion the source files are no longer needed."
    )


def locate_source(source_dir: str | os.PathLike | None) -> BairSource:
    """Finds the BAIR files under source_dir, or raises BairSourceNotFoundError (fast)."""
    if source_dir is None or str(source_dir) == "":
        raise BairSourceNotFoundError(_missing_message(None, "data.bair_source_dir is not set."))
    source_dir = os.path.abspath(os.path.expanduser(os.fspath(source_dir)))
    if not os.path.isdir(source_dir):
        raise BairSourceNotFoundError(
            _missing_message(source_dir, f"directory {source_dir} does not exist.")
        )
    # Extracted layout: <dir>/softmotion30_44k/<split>/ (or <dir> is softmotion30_44k itself).
    problems = []
    for root in (os.path.join(source_dir, EXTRACTED_DIR), source_dir):
        files = {}
        for split in SPLITS:
            split_dir = os.path.join(root, split)
            if os.path.isdir(split_dir):
                names = [n for n in os.listdir(split_dir) if re.search(r"\.tfrecords?$", n)]
                files[split] = [os.path.join(split_dir, n) for n in sorted(names, key=_natural_key)]
        if files and all(files.get(split) for split in SPLITS):
            return BairSource(archive=None, files=files)
        if files:
            missing = [os.path.join(root, s) for s in SPLITS if not files.get(s)]
            problems.append(f"no *.tfrecords in {', '.join(missing)}")
    archive = os.path.join(source_dir, ARCHIVE_NAME)
    if os.path.isfile(archive):
        return _locate_in_archive(source_dir, archive)
    if not problems:
        problems.append(f"no directory {os.path.join(source_dir, EXTRACTED_DIR)}")
    problems.append(f"no archive {archive}")
    raise BairSourceNotFoundError(_missing_message(source_dir, "; ".join(problems) + "."))


def _locate_in_archive(source_dir: str, archive: str) -> BairSource:
    """Lists the split TFRecords inside the (uncompressed, seekable) tar archive."""
    files: dict[str, list[str]] = {split: [] for split in SPLITS}
    try:
        with tarfile.open(archive, "r:") as tar:
            for member in tar.getmembers():
                match = _MEMBER_RE.search(member.name)
                if match and member.isfile():
                    files[match.group(1)].append(member.name)
    except tarfile.TarError as e:
        raise BairSourceNotFoundError(
            _missing_message(source_dir, f"{archive} is not a readable tar archive ({e}).")
        ) from e
    if not all(files[split] for split in SPLITS):
        raise BairSourceNotFoundError(
            _missing_message(
                source_dir,
                f"{archive} holds no {EXTRACTED_DIR}/{{train,test}}/*.tfrecords members.",
            )
        )
    for split in SPLITS:
        files[split].sort(key=lambda n: _natural_key(os.path.basename(n)))
    return BairSource(archive=archive, files=files)


def decode_example(record: bytes, name: str = "<record>") -> dict[str, np.ndarray]:
    """One original BAIR Example -> {'video', 'image_main', 'action', 'endeffector_pos'}."""
    parsed = tfrecord.parse_example(record)
    frame_bytes = SIZE * SIZE * 3

    def get(key: str) -> list[bytes] | np.ndarray:
        if key not in parsed:
            raise ValueError(
                f"{name}: feature {key!r} missing; expected the original BAIR layout with keys "
                f"'{{t}}/image_aux1/encoded' etc. for t in 0..{NUM_FRAMES - 1}."
            )
        return parsed[key]

    def images(camera: str) -> np.ndarray:
        frames = []
        for t in range(NUM_FRAMES):
            (raw,) = get(f"{t}/{camera}/encoded")
            if len(raw) != frame_bytes:
                raise ValueError(
                    f"{name}: {t}/{camera}/encoded has {len(raw)} bytes, expected {frame_bytes} "
                    "raw 64x64x3 uint8 bytes (the original BAIR encoding)."
                )
            frames.append(np.frombuffer(raw, np.uint8).reshape(SIZE, SIZE, 3))
        return np.stack(frames)

    def vectors(key: str, size: int) -> np.ndarray:
        rows = [np.asarray(get(f"{t}/{key}"), np.float32) for t in range(NUM_FRAMES)]
        for t, row in enumerate(rows):
            if row.shape != (size,):
                raise ValueError(f"{name}: {t}/{key} has shape {row.shape}, expected ({size},).")
        return np.stack(rows)

    return {
        "video": images("image_aux1"),
        "image_main": images("image_main"),
        "action": vectors("action", 4),
        "endeffector_pos": vectors("endeffector_pos", 3),
    }


class BairRobotPushing(tfds.core.GeneratorBasedBuilder):
    """BAIR robot pushing (softmotion30_44k): 43,264 train and 256 test videos of 30 frames."""

    name = "bair_robot_pushing"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: from local TFRecords, TF-free."}

    def __init__(self, *, source_dir: str | os.PathLike | None = None, **kwargs):
        """source_dir: local directory with the archive or the extracted files.

        Only needed to prepare; it is not part of the dataset's identity (the prepared
        files do not depend on where the sources were), so reading needs no source_dir.
        """
        self.source_dir = None if source_dir is None else os.fspath(source_dir)
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        video = tfds.features.Tensor(
            shape=(NUM_FRAMES, SIZE, SIZE, 3), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "video": video,  # camera image_aux1
                    "image_main": video,
                    "action": tfds.features.Tensor(shape=(NUM_FRAMES, 4), dtype=np.float32),
                    "endeffector_pos": tfds.features.Tensor(
                        shape=(NUM_FRAMES, 3), dtype=np.float32
                    ),
                }
            ),
            homepage="https://sites.google.com/berkeley.edu/robotic-interaction-datasets",
            # Keep the original order: record i of a split is video i of the release.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # never download: the files must be local
        source = locate_source(self.source_dir)
        return {split: self._generate_examples(source, split) for split in SPLITS}

    def _generate_examples(self, source: BairSource, split: str):
        for file_name, index, record in source.open_records(split):
            yield f"{file_name}:{index:05d}", decode_example(record, f"{file_name} record {index}")
