"""The dataset between the stages: every video as per-frame stage-1 outputs, on disk.

LVT stores int16 VQ-VAE codes (T, h, w, nc) in WORKDIR/codes/; HDR stores float32
latents (T, 1, 1, F) in WORKDIR/hdr_latents/ (format LATENTS_FORMAT, the layout of the F
numbers in metadata.json). Both use the same shards, records and restart rules.

Layout of one split, WORKDIR/codes/<split>/ (written by `lvt_jax.encode`):

* `codes-SSSSS-of-NNNNN.array_record`: shard S holds videos
  [S * videos_per_shard, (S + 1) * videos_per_shard) in order, one record per video.
  A record is a 16-byte header (int32 little-endian T, h, w, nc) followed by the codes,
  int16 little-endian, C order, shape (T, h, w, nc): every frame of the video is kept.
* `spec.json`: what the codes were made from (split, video count, sharding, stage-1
  checkpoint step and model config, data config). Written before any shard, so an encode
  that resumes with different inputs fails instead of mixing codes of two models.
* `labels.npy` (labelled datasets only, e.g. Kinetics): int32 [num_videos], video i's
  class id, so a class-conditional stage 2 reads labels without touching the videos.
* `metadata.json`: the spec plus shard files, code shape and dtype (and `labels` when
  labels.npy exists). Written last (by process 0, once every shard exists): its presence
  means the split is complete.

Why this design: a shard is written under a temporary name, flushed to disk (fsync) and
renamed when complete (in a bucket: written locally and uploaded whole, see
lvt_jax.fileio), so a shard file is either absent or whole, even after a power cut;
a restarted encode skips existing shards and redoes only missing ones. Shards are the
unit of work sharing across processes too. Readers use array_record's random access, so
stage 2 streams clips through the same deterministic, resumable `make_array_iterator` as
stage 1.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from lvt_jax import fileio

FORMAT = "lvt_jax.codes/v1"
LATENTS_FORMAT = "lvt_jax.hdr_latents/v1"
FORMATS = {FORMAT: np.dtype("<i2"), LATENTS_FORMAT: np.dtype("<f4")}  # format -> record dtype
LABELS_FILE = "labels.npy"
HEADER_DTYPE = np.dtype("<i4")
CODE_DTYPE = FORMATS[FORMAT]
_HEADER_BYTES = 4 * HEADER_DTYPE.itemsize


def split_dir(workdir: str, split: str) -> str:
    """WORKDIR/codes/<split>: where `--mode=encode` writes a split's codes."""
    return fileio.join(workdir, "codes", split)


def shard_name(index: int, num_shards: int) -> str:
    return f"codes-{index:05d}-of-{num_shards:05d}.array_record"


def shard_ranges(num_videos: int, videos_per_shard: int) -> list[tuple[int, int]]:
    """[start, stop) video range of every shard (the last one may be shorter)."""
    if videos_per_shard < 1:
        raise ValueError(f"encode.videos_per_shard={videos_per_shard} must be >= 1.")
    return [(s, min(s + videos_per_shard, num_videos))
            for s in range(0, num_videos, videos_per_shard)]


def serialize(codes: np.ndarray, dtype: np.dtype = CODE_DTYPE) -> bytes:
    """Codes (T, h, w, nc) -> one record (shape header + data as `dtype`: int16 codes, or
    float32 latents)."""
    codes = np.asarray(codes)
    if codes.ndim != 4:
        raise ValueError(f"a record holds codes of shape (T, h, w, nc), got {codes.shape}.")
    if np.dtype(dtype).kind == "f":
        if not np.all(np.isfinite(codes)):
            raise ValueError("latents to store are not finite; the stage-1 model diverged.")
    elif codes.size and (codes.min() < 0 or codes.max() > np.iinfo(CODE_DTYPE).max):
        raise ValueError(f"codes must lie in [0, {np.iinfo(CODE_DTYPE).max}] to be stored as "
                         f"int16, got [{codes.min()}, {codes.max()}].")
    header = np.asarray(codes.shape, HEADER_DTYPE).tobytes()
    return header + np.ascontiguousarray(codes, dtype).tobytes()


def deserialize(record: bytes, dtype: np.dtype = CODE_DTYPE) -> np.ndarray:
    """One record -> codes (T, h, w, nc) as `dtype` (read-only view of the bytes)."""
    shape = tuple(int(n) for n in np.frombuffer(record[:_HEADER_BYTES], HEADER_DTYPE))
    out = np.frombuffer(record, dtype, offset=_HEADER_BYTES)
    if out.size != int(np.prod(shape)):
        raise ValueError(f"corrupt code record: header says {shape} but it holds {out.size} "
                         "codes; delete the split's directory and rerun --mode=encode.")
    return out.reshape(shape)


def write_shard(path: str, videos: Sequence[np.ndarray], dtype: np.dtype = CODE_DTYPE) -> None:
    """Writes one shard atomically: a temporary file, flushed to disk and renamed once
    complete (so a power cut never leaves a complete-looking truncated shard)."""
    from array_record.python import array_record_module
    with fileio.staged_write(path) as tmp:
        writer = array_record_module.ArrayRecordWriter(tmp, "group_size:1")
        try:
            for codes in videos:
                writer.write(serialize(codes, dtype))
        finally:
            writer.close()


def write_labels(directory: str, labels: np.ndarray) -> None:
    """Writes labels.npy (int32 [num_videos]) atomically."""
    with fileio.staged_write(fileio.join(directory, LABELS_FILE), keep_ext=True) as tmp:
        np.save(tmp, np.asarray(labels, np.int32))


def read_json(path: str) -> dict | None:
    return fileio.read_json(path)


def write_json(path: str, obj: dict) -> None:
    """Atomic and durable (temp + fsync + rename); processes may race."""
    fileio.write_json(path, obj)


class CodeSource:
    """Random access to one encoded split: item i -> int16 codes (T, h, w, nc) of video i.

    Picklable (grain worker processes reopen the files lazily).
    """

    def __init__(self, directory: str, formats: Sequence[str] = (FORMAT,)):
        self.directory = directory
        meta = read_json(fileio.join(directory, "metadata.json"))
        if meta is None:
            raise FileNotFoundError(
                f"no complete code dataset in {directory} (metadata.json is missing); run "
                "--mode=encode with the same --workdir first (it resumes if interrupted).")
        if meta.get("format") not in formats:
            raise ValueError(f"{directory} holds data in format {meta.get('format')!r}, "
                             f"expected {' or '.join(map(repr, formats))}; delete it and "
                             "rerun --mode=encode.")
        self.metadata = meta
        self.dtype = FORMATS[meta["format"]]
        self._paths = [fileio.join(directory, f) for f in meta["shards"]]
        missing = [p for p in self._paths if not fileio.exists(p)]
        if missing:
            raise FileNotFoundError(
                f"code shards are missing: {missing[:3]}...; rerun --mode=encode (it "
                "re-encodes only the missing shards).")
        self._source = None
        self.labels: np.ndarray | None = None
        if meta.get("labels"):
            with fileio.open(fileio.join(directory, meta["labels"])) as f:
                self.labels = np.load(f)
            if len(self.labels) != len(self):
                raise ValueError(f"{directory}: {meta['labels']} holds {len(self.labels)} "
                                 f"labels for {len(self)} videos; delete the directory and "
                                 "rerun --mode=encode.")

    def _open(self):
        if self._source is None:
            from array_record.python import array_record_data_source
            self._source = array_record_data_source.ArrayRecordDataSource(self._paths)
            if len(self._source) != int(self.metadata["num_videos"]):
                raise ValueError(
                    f"{self.directory}: the shards hold {len(self._source)} videos but "
                    f"metadata.json says {self.metadata['num_videos']}; delete the directory "
                    "and rerun --mode=encode.")
        return self._source

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_source"] = None
        return state

    def __len__(self) -> int:
        return int(self.metadata["num_videos"])

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"video index {index} out of range [0, {len(self)}).")
        return deserialize(self._open()[index], self.dtype)

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        """(h, w, nc) of every frame's codes."""
        return tuple(self.metadata["frame_shape"])

    @property
    def min_frames(self) -> int:
        return int(self.metadata["min_frames"])

    @property
    def identity(self) -> dict:
        """What names these codes (source data, split, stage-1 step): stored with a stage-2
        iterator's state, so a resume on other codes is refused."""
        m = self.metadata
        data = m.get("data", {})
        steps = {k: v for k, v in m.items() if k.endswith("_step")}  # vqvae / hdr_autoencoder
        return {"dataset": f"{m.get('format')} of {data.get('name')}", "source": data,
                "split": m.get("split"), "num_videos": int(m["num_videos"]), **steps}


@dataclasses.dataclass(frozen=True)
class CodeClipTransform:
    """Video index -> {'codes': int16 (clip_length, h, w, nc)}, a window of its codes.

    random_start=True (training): the start frame is uniform over every window of the
    video, drawn from the per-sample RNG (so it depends only on (seed, sample position)).
    random_start=False (evaluation): the first clip_length frames of every video, the
    reference's BAIR convention (256 test clips for BAIR), so the test set is fixed.
    """

    clip_length: int
    random_start: bool
    with_labels: bool = False  # also {'label': int32}: the video's class id
    key: str = "codes"         # the batch key of the window

    def __call__(self, source: Any, index: int, rng: np.random.Generator) -> dict:
        codes = source[int(index)]
        length = codes.shape[0]
        if self.clip_length > length:
            raise ValueError(f"clip_length {self.clip_length} is longer than video {index} "
                             f"({length} frames of codes); lower data.clip_length.")
        start = int(rng.integers(0, length - self.clip_length + 1)) if self.random_start else 0
        out = {self.key: np.asarray(codes[start:start + self.clip_length])}
        if self.with_labels:
            out["label"] = np.int32(source.labels[int(index)])
        return out


def make_code_iterator(directory: str, clip_length: int, global_batch: int,
                       sharding: Any, *, seed: int, train: bool, data_cfg: Any = None,
                       num_classes: int = 0, key: str = "codes",
                       formats: Sequence[str] = (FORMAT,)):
    """Batches {'codes': int16 [B, clip_length, h, w, nc]} (+ 'mask' [B] in eval).

    Train: shuffled videos, a random window each, forever. Eval: every video once, its
    first clip_length frames, the last batch zero-padded with mask 0. num_classes > 0
    (class-conditional stage 2): batches also carry 'label' int32 [B], checked to lie in
    [0, num_classes) before any batch is made.
    """
    from lvt_jax.data import pipeline
    source = CodeSource(directory, formats)
    if num_classes > 0:
        if source.labels is None:
            raise ValueError(f"transformer.model.num_classes={num_classes} but the codes in "
                             f"{directory} carry no labels (the dataset has none, or it was "
                             "encoded before labels were stored): use a labelled dataset "
                             "(kinetics600) and rerun --mode=encode, or set num_classes=0.")
        bad = (source.labels < 0) | (source.labels >= num_classes)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} videos in {directory} have labels outside "
                             f"[0, {num_classes}) (e.g. video {int(np.flatnonzero(bad)[0])}: "
                             f"{int(source.labels[bad][0])}; -1 = unlabelled); set "
                             "transformer.model.num_classes to the dataset's class count "
                             f"(labels go up to {int(source.labels.max())}).")
    if clip_length > source.min_frames:
        raise ValueError(f"clip_length {clip_length} is longer than the shortest encoded "
                         f"video ({source.min_frames} frames) in {directory}; lower "
                         "data.clip_length.")
    get = (lambda k, d: d) if data_cfg is None else (
        lambda k, d: data_cfg.get(k, d) if data_cfg.get(k, d) is not None else d)
    return pipeline.make_array_iterator(
        source, CodeClipTransform(int(clip_length), random_start=bool(train),
                                  with_labels=num_classes > 0, key=key), len(source),
        global_batch, sharding, seed=seed, train=train,
        worker_count=int(get("worker_count", 0)), prefetch=int(get("prefetch", 2)),
        read_threads=int(get("read_threads", 2)), identity=source.identity)
