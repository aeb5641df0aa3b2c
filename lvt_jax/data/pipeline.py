"""Run-time input pipeline: tfds array_record sources + grain, numpy only (no TensorFlow).

Design (why it is built this way):

* The global batch at step k is a pure function of (seed, k). Global sample position
  g = k * global_batch + row maps to a sample by a per-epoch permutation (train; grain's
  `index_shuffle`, re-keyed each epoch) or in order (eval), and every random choice for
  that sample (e.g. a clip's start frame) comes from an RNG keyed by (seed, g). Nothing
  depends on process-local RNG state, on the number of processes or on the number of
  grain workers.
* Each process reads only its own contiguous rows of the global batch and the global
  jax.Array is assembled with `jax.make_array_from_process_local_data`.
* Because batches are random-access by step, the iterator state is just the number of
  batches consumed: `{'step': k, ...}` (small, JSON-serialisable, fits in an orbax
  checkpoint). Resuming rebuilds the grain pipeline from step k; the restored iterator
  yields exactly what the uninterrupted one would have.
* Reading/decoding runs ahead in grain's threads (and optional worker processes); a
  background thread turns local numpy batches into global arrays and keeps `prefetch`
  of them ready. `get_state` counts only batches handed to the caller.
* Eval (train=False) makes one in-order pass over every sample; the last batch is padded
  with zeros and every eval batch carries `mask` float32 [B] (1 real, 0 padding).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import json
import math
import os
import queue
import sys
import threading
from typing import Any, Callable, Mapping, Protocol, Sequence

import grain
import jax
import numpy as np

from lvt_jax import fileio

Batch = dict[str, np.ndarray]
Transform = Callable[[Any, int, np.random.Generator], Mapping[str, np.ndarray]]

_SHUFFLE_STREAM = 0x5EED  # distinct SeedSequence streams for the shuffle and per-sample RNG
_SAMPLE_STREAM = 0x5A3
_TRAIN_STEPS = 2**40  # "forever": a finite length keeps grain's index arithmetic simple

DATASETS = ("synthetic_pushing", "bair", "kinetics600", "video_folder")
KINDS = ("frames", "clips")
# Per-pixel instance ids uint8 [T, H, W] (0 background, then one id per body), the ground
# truth of object-centric metrics (FG-ARI). Not 'mask': eval batches already use that key
# for their padding rows.
INSTANCE_MASK = "instance_mask"
DATASETS_WITH_INSTANCE_MASKS = ("synthetic_pushing",)  # the datasets whose videos carry one
FEATURES = ("video", INSTANCE_MASK)  # the per-frame features a source / clip batch can carry


class RandomAccessSource(Protocol):
    """Anything with len() and integer indexing (a tfds data source, a numpy array...)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


# --------------------------------------------------------------------------- sources


class VideoSource:
    """Random access to one split's videos, uint8 [T, H, W, 3], decoded with numpy only.

    Keeps the last few decoded videos: eval over frames reads the frames of one video
    consecutively, so each video is decoded once instead of T times.

    num_frames / labels (int32 [N], optional): every video's length and class, known
    without decoding (Kinetics stores them beside its shards). Without num_frames every
    video is assumed as long as video 0 (BAIR, synthetic_pushing: all 30 frames).

    extra_features: per-frame features decoded (and cached) with each video, leading axis
    the video's frames, e.g. INSTANCE_MASK. `source[i]` stays the video, so every caller
    that wants only videos is unaffected; `source.feature(i, name)` gives the others.
    identity: what names this data (dataset, config and version, split sizes; JSON
    values), stored with an iterator's state so a resume on other data is refused.
    """

    def __init__(
        self,
        data_source: RandomAccessSource,
        feature: str = "video",
        cache_size: int = 4,
        num_frames: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        extra_features: Sequence[str] = (),
        identity: Mapping[str, Any] | None = None,
    ):
        self._data_source = data_source
        self.identity = dict(identity or {})
        self._feature = feature
        self._cache_size = cache_size
        self.extra_features = tuple(extra_features)
        if "video" in self.extra_features or feature in self.extra_features:
            raise ValueError(f"extra_features {self.extra_features} repeat the video feature.")
        for name, arr in (("num_frames", num_frames), ("labels", labels)):
            if arr is not None and len(arr) != len(data_source):
                raise ValueError(
                    f"{name} has {len(arr)} entries for {len(data_source)} videos; the "
                    "dataset's clip index does not match its shards: prepare it again."
                )
        self._num_frames = None if num_frames is None else np.asarray(num_frames, np.int64)
        self.labels = None if labels is None else np.asarray(labels, np.int32)
        self._init_cache()

    def _init_cache(self) -> None:
        self._cache: collections.OrderedDict[int, Batch] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # picklable for grain worker processes
        state = self.__dict__.copy()
        del state["_cache"], state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_cache()

    def __len__(self) -> int:
        return len(self._data_source)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.item(index)["video"]

    def feature(self, index: int, name: str) -> np.ndarray:
        """Feature `name` ('video' or one of extra_features) of video `index`, read-only."""
        item = self.item(index)
        if name not in item:
            raise ValueError(
                f"feature {name!r} was not read: this source has {tuple(item)}; ask for it "
                f"when loading, e.g. load_videos(data_cfg, split, features=('video', {name!r}))."
            )
        return item[name]

    def item(self, index: int) -> Batch:
        """{'video': uint8 [T,H,W,3], **extra_features} of video `index`, read-only arrays."""
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"video index {index} out of range [0, {len(self)}).")
        with self._lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return dict(self._cache[index])  # a new dict: the cached one stays as read
        record = self._data_source[index]
        video = np.asarray(record[self._feature])
        if video.dtype != np.uint8 or video.ndim != 4 or video.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 [T,H,W,3] videos in feature {self._feature!r}, got "
                f"{video.dtype} {video.shape}."
            )
        item = {"video": video}
        for name in self.extra_features:
            if name not in record:
                raise ValueError(
                    f"video {index} has no feature {name!r} (it has {sorted(record)}); use a "
                    "dataset that stores it or stop asking for it."
                )
            item[name] = np.asarray(record[name])
            if item[name].shape[:1] != video.shape[:1]:
                raise ValueError(
                    f"feature {name!r} of video {index} has shape {item[name].shape}: expected "
                    f"one entry per frame ({video.shape[0]} frames) on its leading axis."
                )
        for value in item.values():
            value.setflags(write=False)  # shared through the cache: nobody may modify it
        with self._lock:
            self._cache[index] = item
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return dict(item)

    @property
    def video_shape(self) -> tuple[int, ...]:
        """(T, H, W, 3) of video 0 (every video's, unless lengths vary: see frame_counts)."""
        return tuple(self[0].shape)

    @property
    def frame_counts(self) -> np.ndarray:
        """int64 [N]: the number of frames of every video."""
        if self._num_frames is None:
            return np.full(len(self), self.video_shape[0], np.int64)
        return self._num_frames

    @property
    def variable_length(self) -> bool:
        counts = self.frame_counts
        return bool(len(counts)) and bool((counts != counts[0]).any())


def _cfg_get(cfg: Any, name: str, default: Any = None) -> Any:
    try:
        value = cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)
    except (AttributeError, KeyError):
        value = default
    return default if value is None else value


def _make_builder(data_cfg: Any):
    """The tfds builder named by data_cfg.name (imported lazily: tfds is slow to import)."""
    from lvt_jax.data import tfds_quiet

    tfds_quiet.install_log_filter()
    name = _cfg_get(data_cfg, "name")
    data_dir = _cfg_get(data_cfg, "data_dir")
    if data_dir is not None and not fileio.is_remote(data_dir):
        data_dir = os.path.expanduser(os.fspath(data_dir))
    if name == "synthetic_pushing":
        from lvt_jax.data import synthetic_pushing

        syn = _cfg_get(data_cfg, "synthetic", {})
        config = synthetic_pushing.make_config(
            num_train=_cfg_get(syn, "num_train", 2000),
            num_test=_cfg_get(syn, "num_test", 256),
            seed=_cfg_get(syn, "seed", 0),
        )
        return synthetic_pushing.SyntheticPushing(
            config=config, data_dir=data_dir, file_format="array_record"
        )
    if name == "bair":
        from lvt_jax.data import bair

        return bair.BairRobotPushing(
            source_dir=_cfg_get(data_cfg, "bair_source_dir"),
            data_dir=data_dir,
            file_format="array_record",
        )
    if name == "kinetics600":
        from lvt_jax.data import kinetics

        kin = _cfg_get(data_cfg, "kinetics", {})
        return kinetics.Kinetics600(
            source_dir=_cfg_get(kin, "source_dir"),
            num_workers=int(_cfg_get(kin, "num_workers", 0)),
            clips_per_shard=int(_cfg_get(kin, "clips_per_shard", 256)),
            config=kinetics.make_config(
                size=int(_cfg_get(data_cfg, "image_size", 64)),
                fps=_cfg_get(kin, "fps"),
                min_frames=int(_cfg_get(kin, "min_frames", 16)),
            ),
            data_dir=data_dir,
            file_format="array_record",
        )
    if name == "video_folder":
        from lvt_jax.data import video_folder

        vf = _cfg_get(data_cfg, "video_folder", {})
        return video_folder.VideoFolder(
            source_dir=_cfg_get(vf, "source_dir"),
            num_workers=int(_cfg_get(vf, "num_workers", 0)),
            clips_per_shard=int(_cfg_get(vf, "clips_per_shard", 64)),
            config=video_folder.make_config(
                _cfg_get(vf, "source_dir"),
                size=int(_cfg_get(data_cfg, "image_size", 64)),
                fps=_cfg_get(vf, "fps"),
                min_frames=int(_cfg_get(vf, "min_frames", 16)),
                max_frames=int(_cfg_get(vf, "max_frames", 0)) or None,
                test_fraction=float(_cfg_get(vf, "test_fraction", 0.1)),
                labels=bool(_cfg_get(vf, "labels", False)),
            ),
            data_dir=data_dir,
            file_format="array_record",
        )
    raise ValueError(f"data.name must be one of {DATASETS}, got {name!r}.")


def _prepare(builder: Any, data_cfg: Any = None) -> Any:
    """Builds the dataset if it is not on disk yet: synthetic generates, BAIR converts,
    local videos (Kinetics, a video folder) are listed and decoded. Returns the builder to
    read with (a new one when the data went to a bucket: see lvt_jax.data.staging).

    Multi-host: process 0 prepares first (the others wait), then any process that still
    sees no data (a process-local data_dir) prepares its own copy.
    """
    remote = fileio.is_remote(os.fspath(builder.data_dir))
    if remote and data_cfg is None:
        raise ValueError("a data_dir in a bucket is prepared from its config: pass data_cfg.")

    def prepare_here() -> None:
        if builder.is_prepared():
            return
        if not remote:
            _build(builder)
            return
        from lvt_jax.data import staging

        staging.prepare_and_upload(
            builder, lambda d: _make_builder(_with_data_dir(data_cfg, d)), _build)

    if builder.is_prepared():
        check = getattr(builder, "check_prepared", None)  # e.g. a source changed since
        if check is not None:
            check()
        return builder
    if jax.process_count() == 1:
        prepare_here()
    else:
        from jax.experimental import multihost_utils

        if jax.process_index() == 0:
            prepare_here()
        multihost_utils.sync_global_devices(f"lvt_jax.data.prepare:{builder.info.full_name}")
        prepare_here()
        multihost_utils.sync_global_devices(f"lvt_jax.data.prepared:{builder.info.full_name}")
    return _make_builder(data_cfg) if remote else builder  # reads the uploaded dataset info


def _build(builder: Any) -> None:
    """Prepares `builder`'s dataset in its (local) data_dir, failing fast on missing input."""
    from lvt_jax.data import tfds_quiet

    if builder.is_prepared():
        return
    if builder.name == "bair_robot_pushing":
        from lvt_jax.data import bair

        bair.locate_source(builder.source_dir)  # fail in seconds if files are missing
    locate = getattr(builder, "locate", None)  # local videos: list them first
    if locate is not None:
        locate()  # fails fast, naming the paths, counts and fix
    tfds_quiet.download_and_prepare(builder)


def _with_data_dir(data_cfg: Any, data_dir: str) -> Any:
    """A copy of the data config with another data_dir."""
    cfg = copy.deepcopy(data_cfg)
    if isinstance(cfg, dict):
        cfg["data_dir"] = data_dir
    else:
        cfg.data_dir = data_dir
    return cfg


def check_features(data_cfg: Any, features: Sequence[str]) -> tuple[str, ...]:
    """Checks that data_cfg's dataset has `features`, from the config alone (no data read).

    Returns the features other than 'video'. load_videos / make_iterator call it before
    anything is built; config validation can call it too.
    """
    features = (features,) if isinstance(features, str) else tuple(features)
    name = _cfg_get(data_cfg, "name")
    if "mask" in features:
        raise ValueError(
            "'mask' is not a video feature: eval batches use that key for their padding rows "
            f"(1 real, 0 padding). The per-pixel instance masks are {INSTANCE_MASK!r}."
        )
    unknown = [f for f in features if f not in FEATURES]
    if unknown or "video" not in features or len(set(features)) != len(features):
        raise ValueError(
            f"features must be 'video' plus any of {FEATURES[1:]}, each once; got {features}."
        )
    if INSTANCE_MASK in features and name not in DATASETS_WITH_INSTANCE_MASKS:
        raise ValueError(
            f"data.name={name!r} has no {INSTANCE_MASK!r} feature (ground-truth per-pixel "
            f"instance masks): only {', '.join(DATASETS_WITH_INSTANCE_MASKS)} stores them. Use "
            "--config.data.name=synthetic_pushing, or turn off the mask-based metrics (FG-ARI)."
        )
    return tuple(f for f in features if f != "video")


def load_videos(data_cfg: Any, split: str, features: Sequence[str] = ("video",)) -> VideoSource:
    """Random-access videos of `split` ('train' | 'test'); builds the dataset on first use.

    synthetic_pushing is generated on the spot; bair is converted from the local files in
    data_cfg.bair_source_dir, kinetics600 from the clips in data_cfg.kinetics.source_dir
    (never downloaded). Reading needs numpy only. For kinetics600 the split 'test' means
    data_cfg.kinetics.test_split ('test' or 'validation').

    features: 'video' plus per-frame features to read with it, e.g. ('video',
    INSTANCE_MASK) for evaluating a decomposition: `source[i]` is still video i and
    `source.feature(i, INSTANCE_MASK)` its uint8 [T, H, W] ids. A dataset without a
    requested feature is refused before it is built.
    """
    extra = check_features(data_cfg, features)
    builder = _prepare(_make_builder(data_cfg), data_cfg)
    if builder.name == "kinetics600" and split.split("[", 1)[0] == "test":
        alias = str(_cfg_get(_cfg_get(data_cfg, "kinetics", {}), "test_split", "test"))
        split = alias + split[len("test") :]
    available = list(builder.info.splits.keys())
    base_split = split.split("[", 1)[0]
    if base_split not in available:
        hint = (
            " (for evaluation set --config.data.kinetics.test_split to one of them)"
            if builder.name == "kinetics600"
            else ""
        )
        raise ValueError(
            f"split {split!r} not in {builder.info.full_name}: choose from {available}{hint}."
        )
    index = builder.clip_index(split) if hasattr(builder, "clip_index") else {}
    data_source = builder.as_data_source(split=split)
    identity = {
        "dataset": builder.info.full_name,  # name/config/version: config encodes sizes, seed
        "split": split,
        "num_videos": len(data_source),
        "split_sizes": {k: int(v.num_examples) for k, v in sorted(builder.info.splits.items())},
    }
    source = VideoSource(
        data_source,
        num_frames=index.get("num_frames"),
        labels=index.get("label"),
        extra_features=extra,
        identity=identity,
    )
    if extra and len(source):
        source.item(0)  # a missing or malformed feature fails here, not in a worker
    return source


# --------------------------------------------------------------------------- transforms


@dataclasses.dataclass(frozen=True)
class FrameTransform:
    """Sample index -> one frame: video = index // T, t = index % T.

    With T the videos' length this is every frame of every video; with a smaller T, the
    first T frames of each (Kinetics stage-1 evaluation: the first 16, as the reference).
    """

    num_frames: int

    def __call__(self, source: RandomAccessSource, index: int, rng: np.random.Generator) -> Batch:
        del rng
        video, t = divmod(int(index), self.num_frames)
        return {"image": np.asarray(source[video][t])}


@dataclasses.dataclass(frozen=True, eq=False)
class IndexedFrameTransform:
    """Sample index -> one frame, every frame of videos of varying length, in order.

    offsets[v] is the sample index of video v's first frame (cumulative frame counts).
    """

    offsets: np.ndarray

    def __call__(self, source: RandomAccessSource, index: int, rng: np.random.Generator) -> Batch:
        del rng
        video = int(np.searchsorted(self.offsets, int(index), side="right")) - 1
        return {"image": np.asarray(source[video][int(index) - int(self.offsets[video])])}


@dataclasses.dataclass(frozen=True)
class RandomFrameTransform:
    """Sample index -> one uniformly random frame of video index // per_video.

    The LVT reference's Kinetics stage 1 ("one random frame per video per sample"): an
    epoch visits every video per_video times whatever its length, so long clips do not
    dominate; the frame comes from the per-sample RNG (a function of (seed, position)).
    """

    per_video: int

    def __call__(self, source: RandomAccessSource, index: int, rng: np.random.Generator) -> Batch:
        video = np.asarray(source[int(index) // self.per_video])
        return {"image": video[int(rng.integers(0, video.shape[0]))]}


@dataclasses.dataclass(frozen=True)
class ClipTransform:
    """Sample index -> a clip_length-frame window of video `index`.

    random_start=True (train): start uniform in [0, T - L], drawn from the per-sample RNG.
    random_start=False (eval): the first L frames, as the LVT reference evaluates BAIR.
    """

    clip_length: int
    random_start: bool
    extra_features: tuple[str, ...] = ()  # cut to the same window (VideoSource.feature)

    def __call__(self, source: RandomAccessSource, index: int, rng: np.random.Generator) -> Batch:
        video = np.asarray(source[int(index)])
        length = video.shape[0]
        if self.clip_length > length:
            raise ValueError(
                f"clip_length {self.clip_length} is longer than the videos ({length} frames); "
                "lower data.clip_length."
            )
        start = int(rng.integers(0, length - self.clip_length + 1)) if self.random_start else 0
        window = slice(start, start + self.clip_length)
        clip = {"video": video[window]}
        for name in self.extra_features:
            clip[name] = np.asarray(source.feature(int(index), name))[window]
        return clip


# --------------------------------------------------------------------------- batching


def sample_rng(seed: int, position: int) -> np.random.Generator:
    """The RNG of the sample at global position `position`: keyed by (seed, position) only."""
    return np.random.default_rng([int(seed), _SAMPLE_STREAM, int(position)])


def shuffled_item(seed: int, position: int, num_items: int) -> int:
    """Train order: item at global position `position`, a fresh permutation every epoch."""
    epoch, offset = divmod(int(position), num_items)
    epoch_seed = int(
        np.random.SeedSequence([int(seed), _SHUFFLE_STREAM, epoch]).generate_state(1)[0]
    )
    return int(
        grain.experimental.index_shuffle(offset, max_index=num_items - 1, seed=epoch_seed, rounds=4)
    )


class _RowReader:
    """Local flat row j -> the sample of global position g(j), transformed (picklable).

    Local row j is row `row_start + j % local_batch` of global step `j // local_batch`.
    """

    def __init__(
        self, source, transform, *, num_items, global_batch, row_start, local_batch, seed, train
    ):
        self.source = source
        self.transform = transform
        self.num_items = num_items
        self.global_batch = global_batch
        self.row_start = row_start
        self.local_batch = local_batch
        self.seed = seed
        self.train = train
        self._padding: Batch | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_padding"] = None
        return state

    def _read(self, item: int, position: int) -> Batch:
        sample = self.transform(self.source, item, sample_rng(self.seed, position))
        return {k: np.asarray(v) for k, v in sample.items()}

    def __call__(self, j: int) -> Batch:
        step, row = divmod(int(j), self.local_batch)
        position = step * self.global_batch + self.row_start + row
        if self.train:
            return self._read(shuffled_item(self.seed, position, self.num_items), position)
        if position < self.num_items:
            sample = self._read(position, position)
            sample["mask"] = np.float32(1.0)
            return sample
        if self._padding is None:  # zeros shaped like a real sample
            template = self._read(0, 0)
            self._padding = {k: np.zeros_like(v) for k, v in template.items()}
            self._padding["mask"] = np.float32(0.0)
        return dict(self._padding)


def _stack(samples: Sequence[Batch]) -> Batch:
    return {k: np.stack([s[k] for s in samples]) for k in samples[0]}


def _batch_sharding(sharding: jax.sharding.Sharding) -> jax.sharding.NamedSharding:
    """The given sharding reduced to its batch axis (trailing axes replicated).

    The same sharding then fits every array of the batch, whatever its rank.
    """
    if not isinstance(sharding, jax.sharding.NamedSharding):
        raise TypeError(
            f"sharding must be a jax.sharding.NamedSharding, got {type(sharding).__name__}."
        )
    spec = tuple(sharding.spec)
    if any(axis is not None for axis in spec[1:]):
        raise ValueError(
            f"batch sharding {sharding.spec} shards a non-batch axis; use a spec that names "
            "mesh axes for the leading (batch) dimension only, e.g. P(('data', 'fsdp'))."
        )
    return jax.sharding.NamedSharding(
        sharding.mesh, jax.sharding.PartitionSpec(spec[0] if spec else None)
    )


def _process_rows(sharding: jax.sharding.NamedSharding, global_batch: int) -> tuple[int, int]:
    """The contiguous rows of the global batch this process's devices hold."""
    indices = sharding.addressable_devices_indices_map((global_batch,)).values()
    starts = sorted({idx[0].indices(global_batch)[0] for idx in indices})
    stops = sorted({idx[0].indices(global_batch)[1] for idx in indices})
    start, stop = starts[0], stops[-1]
    covered = np.zeros(global_batch, bool)
    for idx in indices:
        covered[idx[0]] = True
    if not covered[start:stop].all() or covered.sum() != stop - start:
        raise ValueError(
            "this process's devices hold non-contiguous rows of the batch; order the mesh "
            "devices so each process's devices are adjacent along the batch axes."
        )
    return start, stop


class BatchIterator:
    """Global batches (dict of jax.Array, or local numpy rows when sharding is None).

    Iterate with `next(it)` / `for batch in it`. `get_state()` -> JSON-serialisable dict,
    `set_state(state)` resumes exactly. Train iterators never end; an eval iterator ends
    after `len(it)` batches (call `reset()` to run it again).
    """

    def __init__(
        self,
        reader: _RowReader,
        *,
        num_steps: int | None,
        steps_per_epoch: int,
        local_batch: int,
        sharding: jax.sharding.NamedSharding | None,
        prefetch: int,
        worker_count: int,
        read_threads: int,
        state_info: dict[str, Any],
    ):
        self._reader = reader
        self._num_steps = num_steps
        self._steps_per_epoch = steps_per_epoch
        self._local_batch = local_batch
        self._sharding = sharding
        self._prefetch = max(1, int(prefetch))
        self._worker_count = int(worker_count)
        self._read_threads = int(read_threads)
        self._state_info = dict(state_info)
        self._step = 0
        self._producer: _Producer | None = None

    # -- public API
    @property
    def steps_per_epoch(self) -> int:
        """Batches per pass over the data (eval: the last one padded)."""
        return self._steps_per_epoch

    @property
    def step(self) -> int:
        """Batches handed out so far (the resume point)."""
        return self._step

    def __len__(self) -> int:
        if self._num_steps is None:
            raise TypeError(
                "a train iterator repeats forever; use it.steps_per_epoch instead of len()."
            )
        return self._num_steps

    def __iter__(self) -> "BatchIterator":
        return self

    def __next__(self) -> dict[str, Any]:
        if self._num_steps is not None and self._step >= self._num_steps:
            raise StopIteration
        if self._producer is None:
            self._producer = _Producer(self, self._step)
        batch = self._producer.get()
        self._step += 1
        if self._num_steps is not None and self._step >= self._num_steps:
            self.close()  # one pass done: release reader threads / worker processes now
        return batch

    def get_state(self) -> dict[str, Any]:
        """{'step': batches consumed, 'seed', 'global_batch', 'num_items', 'data': identity}."""
        return {"step": self._step, **copy.deepcopy(self._state_info)}

    def set_state(self, state: Mapping[str, Any]) -> None:
        """Resumes at state['step']; refuses a state saved with other settings or data.

        Entries the saved state lacks (written by an older version) are not checked.
        """
        if "step" not in state:
            raise ValueError(f"iterator state needs a 'step' entry, got keys {sorted(state)}.")
        differing = [
            d
            for key, value in self._state_info.items()
            if key in state
            for d in _differences(key, state[key], value)
        ]
        if differing:
            raise ValueError(
                "the iterator state was saved with other data or settings: "
                f"{'; '.join(differing)}. Resuming would not continue the same batch sequence: "
                "use the data and seed the run was trained with, or start a fresh run "
                "(another --workdir)."
            )
        step = int(state["step"])
        if step < 0:
            raise ValueError(f"iterator state step must be >= 0, got {step}.")
        self.close()
        self._step = step

    def reset(self) -> None:
        """Back to the first batch (e.g. to run an eval iterator again)."""
        self.set_state({"step": 0})

    def close(self) -> None:
        """Stops the background reading (also done on garbage collection)."""
        if self._producer is not None:
            self._producer.stop()
            self._producer = None

    def __del__(self, _is_finalizing: Callable[[], bool] = sys.is_finalizing) -> None:
        if _is_finalizing():  # at exit grain cleans up its own workers
            return
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- internals used by _Producer
    def _grain_iterator(self, start_step: int):
        total = (
            self._num_steps if self._num_steps is not None else _TRAIN_STEPS
        ) * self._local_batch
        ds = grain.MapDataset.range(total).map(self._reader)
        ds = ds.batch(self._local_batch, drop_remainder=True, batch_fn=_stack)[start_step:]
        it_ds = ds.to_iter_dataset(
            grain.ReadOptions(num_threads=self._read_threads, prefetch_buffer_size=self._prefetch)
        )
        if self._worker_count > 0:
            _mark_flags_parsed()
            it_ds = it_ds.mp_prefetch(
                grain.MultiprocessingOptions(
                    num_workers=self._worker_count, per_worker_buffer_size=1
                )
            )
        return iter(it_ds)


def _differences(name: str, saved: Any, now: Any) -> list[str]:
    """'name: saved (saved) vs now (now)' for every differing leaf of two JSON values."""
    if isinstance(saved, Mapping) and isinstance(now, Mapping):
        return [
            d
            for k in sorted(set(saved) | set(now), key=str)
            for d in _differences(f"{name}.{k}", saved.get(k), now.get(k))
        ]
    if json.loads(json.dumps(saved)) == json.loads(json.dumps(now)):
        return []
    return [f"{name}: {saved!r} (saved) vs {now!r} (now)"]


def _to_global(sharding: jax.sharding.NamedSharding | None, global_batch: int, batch: Batch) -> Any:
    """Local rows -> global jax.Arrays (or the local numpy rows when sharding is None)."""
    if sharding is None:  # plain arrays: worker batches arrive in shared-memory subclasses
        return {
            key: np.array(value) if type(value) is not np.ndarray else value
            for key, value in batch.items()
        }
    return {
        key: jax.make_array_from_process_local_data(
            sharding, local, (global_batch,) + local.shape[1:]
        )
        for key, local in batch.items()
    }


_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _Producer:
    """Background thread: grain iterator -> global arrays -> bounded queue."""

    def __init__(self, owner: BatchIterator, start_step: int):
        self._queue: queue.Queue = queue.Queue(maxsize=owner._prefetch)
        self._stop = threading.Event()
        self._iterator = owner._grain_iterator(start_step)
        # The thread must not reference `owner`, so an abandoned iterator can be collected.
        to_global = functools.partial(
            _to_global, owner._sharding, owner._state_info["global_batch"]
        )
        self._thread = threading.Thread(
            target=self._run, args=(to_global,), name="lvt_jax-data-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, to_global: Callable[[Batch], Any]) -> None:
        try:
            for batch in self._iterator:
                if not self._put(to_global(batch)):
                    return
            self._put(_END)
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            self._put(_Failure(e))

    def get(self) -> Any:
        item = self._queue.get()
        if item is _END:
            raise RuntimeError("the data pipeline ended early; this is a bug in lvt_jax.data.")
        if isinstance(item, _Failure):
            raise RuntimeError(f"data pipeline failed: {item.error!r}") from item.error
        return item

    def stop(self) -> None:
        self._stop.set()
        while True:  # unblock the producer if it waits on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10)
        iterator, self._iterator = self._iterator, None
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


def _mark_flags_parsed() -> None:
    """grain worker processes read absl flags; mark them parsed when no absl app ran."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_array_iterator(
    source: RandomAccessSource,
    transform: Transform,
    num_items: int,
    global_batch: int,
    sharding: jax.sharding.NamedSharding | None,
    *,
    seed: int,
    train: bool,
    worker_count: int = 0,
    prefetch: int = 2,
    read_threads: int = 2,
    process_index: int | None = None,
    process_count: int | None = None,
    identity: Mapping[str, Any] | None = None,
) -> BatchIterator:
    """Global batches of `transform(source, item, rng)` over items 0..num_items-1.

    transform(source, item, rng) -> dict of numpy arrays (one sample); rng is keyed by
    (seed, global sample position), so per-sample randomness is process-independent.
    train=True: shuffled (new permutation each epoch), repeats forever.
    train=False: every item once in order, last batch zero-padded, `mask` float32 [B].
    sharding: batch sharding of the global arrays; None yields this process's local numpy
    rows instead (for tests and debugging). process_index / process_count override jax's
    (tests only; they require sharding=None unless they equal jax's values).
    identity: what names the data (JSON values, e.g. VideoSource.identity); saved in the
    iterator state, so a resume on other data (another seed, size or dataset) is refused.
    """
    num_items, global_batch, seed = int(num_items), int(global_batch), int(seed)
    if num_items < 1:
        raise ValueError(
            f"the dataset is empty (num_items={num_items}); check the split and data_dir."
        )
    if global_batch < 1:
        raise ValueError(f"global_batch must be >= 1, got {global_batch}.")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}.")
    pid = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    if not 0 <= pid < count:
        raise ValueError(f"process_index {pid} not in [0, process_count={count}).")
    if global_batch % count:
        raise ValueError(
            f"global_batch {global_batch} is not divisible by the {count} processes; "
            "use a multiple of the process count."
        )
    overridden = (pid, count) != (jax.process_index(), jax.process_count())
    if sharding is not None:
        if overridden:
            raise ValueError(
                "process_index/process_count overrides only work with sharding=None (local "
                "numpy rows): a global jax.Array needs the real process layout."
            )
        sharding = _batch_sharding(sharding)
        axes = sharding.spec[0]
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        num_shards = math.prod(sharding.mesh.shape[a] for a in axes)
        if global_batch % num_shards:
            raise ValueError(
                f"global_batch {global_batch} is not divisible by the {num_shards} batch shards of "
                f"mesh axes {axes}; use a multiple of {num_shards}."
            )
        row_start, row_stop = _process_rows(sharding, global_batch)
    else:
        row_start, row_stop = pid * global_batch // count, (pid + 1) * global_batch // count
    local_batch = row_stop - row_start
    reader = _RowReader(
        source,
        transform,
        num_items=num_items,
        global_batch=global_batch,
        row_start=row_start,
        local_batch=local_batch,
        seed=seed,
        train=bool(train),
    )
    steps_per_epoch = math.ceil(num_items / global_batch)
    return BatchIterator(
        reader,
        num_steps=None if train else steps_per_epoch,
        steps_per_epoch=steps_per_epoch,
        local_batch=local_batch,
        sharding=sharding,
        prefetch=prefetch,
        worker_count=worker_count,
        read_threads=read_threads,
        state_info={
            "seed": seed,
            "global_batch": global_batch,
            "num_items": num_items,
            "data": json.loads(json.dumps(dict(identity or {}))),
        },
    )


def make_iterator(
    data_cfg: Any,
    split: str,
    kind: str,
    global_batch: int,
    sharding: jax.sharding.NamedSharding | None,
    *,
    seed: int,
    train: bool,
    process_index: int | None = None,
    process_count: int | None = None,
    frames_per_video: int = 0,
    eval_frames_per_video: int = 0,
    features: Sequence[str] = ("video",),
) -> BatchIterator:
    """Video batches: kind 'frames' -> {'image': uint8 [B,H,W,3]} over every frame of every
    video; kind 'clips' -> {'video': uint8 [B,L,H,W,3]}, L = data_cfg.clip_length, random
    window in train, first L frames in eval. Eval batches also carry 'mask' float32 [B].

    features (clips only): ('video', INSTANCE_MASK) adds 'instance_mask' uint8 [B,L,H,W],
    the same window as the video's; asking it of a dataset without masks fails here.

    Frames, as stage 1 samples them: frames_per_video=0 takes every frame of every video
    (BAIR); k > 0 takes k uniformly random frames per video per epoch (Kinetics: 1). In
    eval (train=False), eval_frames_per_video=0 takes every frame, K > 0 the first K of
    each video (Kinetics: 16, the reference's test setting). Videos may differ in length.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
    extra = check_features(data_cfg, features)
    if extra and kind != "clips":
        raise ValueError(
            f"features {extra} come with kind='clips' only; for whole videos use "
            f"load_videos(data_cfg, split, features={tuple(features)})."
        )
    source = load_videos(data_cfg, split, features)
    counts = source.frame_counts
    shortest = int(counts.min()) if len(counts) else 0
    per_video = int(frames_per_video if train else eval_frames_per_video)
    if per_video < 0:
        raise ValueError(f"frames per video must be >= 0, got {per_video}.")
    if kind == "frames":
        transform: Transform
        if per_video == 0 and not source.variable_length:
            transform = FrameTransform(shortest)
            num_items = len(source) * shortest
        elif per_video == 0:
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            transform = IndexedFrameTransform(offsets)
            num_items = int(offsets[-1])
        elif train:
            transform = RandomFrameTransform(per_video)
            num_items = len(source) * per_video
        else:
            if per_video > shortest:
                raise ValueError(
                    f"eval_frames_per_video={per_video} is longer than the shortest {split} "
                    f"video ({shortest} frames); lower it."
                )
            transform = FrameTransform(per_video)
            num_items = len(source) * per_video
    else:
        clip_length = int(_cfg_get(data_cfg, "clip_length", 16))
        if clip_length > shortest:
            raise ValueError(
                f"clip_length {clip_length} is longer than the shortest {split} video "
                f"({shortest} frames); lower data.clip_length."
            )
        transform = ClipTransform(clip_length, random_start=bool(train), extra_features=extra)
        transform(source, 0, sample_rng(0, 0))  # fail now, not in a worker, if clips don't fit
        num_items = len(source)
    return make_array_iterator(
        source,
        transform,
        num_items,
        global_batch,
        sharding,
        seed=seed,
        train=train,
        worker_count=int(_cfg_get(data_cfg, "worker_count", 0)),
        prefetch=int(_cfg_get(data_cfg, "prefetch", 2)),
        read_threads=int(_cfg_get(data_cfg, "read_threads", 2)),
        process_index=process_index,
        process_count=process_count,
        identity=source.identity,
    )


__all__ = [
    "DATASETS_WITH_INSTANCE_MASKS",
    "INSTANCE_MASK",
    "BatchIterator",
    "ClipTransform",
    "FrameTransform",
    "IndexedFrameTransform",
    "RandomFrameTransform",
    "RandomAccessSource",
    "VideoSource",
    "check_features",
    "load_videos",
    "make_array_iterator",
    "make_iterator",
    "sample_rng",
    "shuffled_item",
]
