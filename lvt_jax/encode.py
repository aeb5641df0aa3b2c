"""--mode=encode: every video of both splits -> stage-1 codes on disk (WORKDIR/codes/).

Stage 2 trains on codes, never on pixels, so the frozen VQ-VAE runs once per frame here
instead of once per frame per training step. The on-disk format and why it is restartable
are described in `lvt_jax.data.codes`.

Work sharing: shard s of a split is encoded by process s % process_count. Each process
runs the encoder on its own devices only (parameters replicated on them, frames split
over them), so processes never wait on each other until the final barrier, after which
process 0 writes metadata.json.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
import time
from typing import Any, Iterable, Iterator

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lvt_jax import fileio
from lvt_jax import sharding as shd
from lvt_jax.data import codes as codes_lib

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


class FrameEncoder:
    """Batches frames through a jitted VQ-VAE encoder on this process's devices.

    Every call runs at one fixed batch (the last one zero-padded), so it compiles once.
    """

    def __init__(self, model: Any, variables: Any, batch_size: int, image_shape: tuple):
        from lvt_jax.stages.vqvae import to_model_input
        devices = jax.local_devices()
        n = len(devices)
        self.batch_size = max(n, -(-int(batch_size) // n) * n)  # a multiple of the devices
        self.image_shape = tuple(image_shape)
        mesh = Mesh(np.asarray(devices), ("batch",))
        replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
        self.variables = jax.device_put(variables, replicated)

        def encode(variables, frames):
            chex.assert_shape(frames, (self.batch_size, *self.image_shape))
            out = model.apply(variables, to_model_input(frames), method="encode")
            return out.astype(jnp.int16)

        self._encode = jax.jit(encode, in_shardings=(replicated, split), out_shardings=split)
        self._split = split
        self.code_shape = tuple(jax.eval_shape(
            self._encode, self.variables,
            jax.ShapeDtypeStruct((self.batch_size, *self.image_shape), jnp.uint8)).shape[1:])

    def encode_frames(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] (any N) -> int16 codes [N, h, w, nc]."""
        return np.concatenate(list(self._batches([frames]))) if len(frames) else \
            np.zeros((0, *self.code_shape), np.int16)

    def encode_videos(self, videos: Iterable[np.ndarray]) -> list[np.ndarray]:
        """uint8 videos [T_i, H, W, 3] -> int16 codes [T_i, h, w, nc] each, in order.

        Frames of consecutive videos share batches; device work for one batch overlaps
        the host's preparation of the next (asynchronous dispatch).
        """
        lengths: list[int] = []

        def frames() -> Iterator[np.ndarray]:
            for v in videos:
                v = np.asarray(v)
                if v.shape[1:] != self.image_shape or v.dtype != np.uint8:
                    raise ValueError(f"expected uint8 videos [T, {', '.join(map(str, self.image_shape))}], "
                                     f"got {v.dtype} {v.shape}; check data.image_size.")
                lengths.append(v.shape[0])
                yield v

        flat = np.concatenate(list(self._batches(frames())))
        return np.split(flat, np.cumsum(lengths)[:-1]) if lengths else []

    def _batches(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Encodes a stream of frame arrays in fixed-size batches; yields host codes."""
        buf: list[np.ndarray] = []
        buffered = 0
        in_flight: collections.deque = collections.deque()

        def dispatch(batch: np.ndarray, valid: int):
            x = jax.device_put(batch, self._split)
            in_flight.append((self._encode(self.variables, x), valid))

        def drain(keep: int) -> Iterator[np.ndarray]:
            while len(in_flight) > keep:
                out, valid = in_flight.popleft()
                yield np.asarray(out)[:valid]

        for chunk in chunks:
            buf.append(chunk)
            buffered += len(chunk)
            while buffered >= self.batch_size:
                allf = np.concatenate(buf)
                dispatch(allf[:self.batch_size], self.batch_size)
                buf, buffered = [allf[self.batch_size:]], len(allf) - self.batch_size
                yield from drain(keep=1)
        if buffered:
            allf = np.concatenate(buf)
            pad = np.zeros((self.batch_size - buffered, *self.image_shape), np.uint8)
            dispatch(np.concatenate([allf, pad]), buffered)
        yield from drain(keep=0)


def _prefetch(fn, indices: range, depth: int = 8) -> Iterator[Any]:
    """fn(i) for i in indices, in order, read ahead by `depth` threads' worth."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        pending: collections.deque = collections.deque()
        it = iter(indices)
        for i in it:
            pending.append(pool.submit(fn, i))
            if len(pending) >= depth:
                break
        for i in it:
            yield pending.popleft().result()
            pending.append(pool.submit(fn, i))
        while pending:
            yield pending.popleft().result()


def split_spec(config: Any, split: str, num_videos: int, video_shape: tuple,
               vqvae_step: int, *, fmt: str = codes_lib.FORMAT, stage: str = "vqvae",
               model: dict | None = None, videos_per_shard: int | None = None) -> dict:
    """What a split's codes are a function of; a resumed encode must match it exactly.

    `stage` names the stage-1 model (its checkpoint step and config are recorded as
    `<stage>_step` / `<stage>_model`; `model` defaults to LVT's vqvae.model)."""
    d = config.data
    data = {"name": d.name, "image_size": int(d.image_size)}
    if d.name == "synthetic_pushing":
        data["synthetic"] = d.synthetic.to_dict()
    if d.name == "kinetics600":
        k = d.kinetics
        data["kinetics"] = {"fps": None if k.fps is None else float(k.fps),
                            "min_frames": int(k.min_frames), "test_split": str(k.test_split)}
    if d.name == "video_folder":  # which folder, split and frames (not how it was built)
        v = d.video_folder
        data["video_folder"] = {
            "source_dir": fileio.absolute(str(v.source_dir)),
            "fps": None if v.fps is None else float(v.fps), "min_frames": int(v.min_frames),
            "max_frames": int(v.max_frames or 0), "test_fraction": float(v.test_fraction),
            "labels": bool(v.labels)}
    vps = int(config.encode.videos_per_shard if videos_per_shard is None else videos_per_shard)
    return {"format": fmt, "split": split, "num_videos": int(num_videos),
            "video_shape": [int(n) for n in video_shape], "videos_per_shard": vps,
            "num_shards": len(codes_lib.shard_ranges(num_videos, vps)),
            f"{stage}_step": int(vqvae_step),
            f"{stage}_model": config.vqvae.model.to_dict() if model is None else model,
            "data": data}


def _check_spec(directory: str, spec: dict, pid: int = 0) -> None:
    """Process 0 records the spec of a new split; every process compares an existing one."""
    path = fileio.join(directory, "spec.json")
    old = codes_lib.read_json(path)
    if old is None:
        if pid == 0:
            codes_lib.write_json(path, spec)
    elif old != spec:
        diff = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
        steps = [f"{k}: {old.get(k)} -> {spec[k]}" for k in diff if k.endswith("_step")]
        raise ValueError(
            f"{directory} holds codes made from different inputs (differing: {diff}"
            f"{'; a newer stage-1 checkpoint, ' + ', '.join(steps) if steps else ''}). "
            "Delete that directory to re-encode, or point --workdir elsewhere.")


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def encode_split(encoder: Any, videos: Any, directory: str, spec: dict, *,
                 codebook_size: int | None = None, extra_meta: dict | None = None,
                 process_index: int | None = None, process_count: int | None = None) -> dict:
    """Encodes this process's missing shards of one split; process 0 then writes metadata.

    `encoder.encode_videos(videos) -> per-video arrays` (FrameEncoder: LVT's codes; HDR's
    latent encoder likewise), with `encoder.code_shape` (one frame's) and optionally
    `encoder.dtype` (default int16 codes). `extra_meta` goes into metadata.json.

    Returns {'encoded': [shard ids done now], 'skipped': [shard ids already on disk]}.
    """
    pid = jax.process_index() if process_index is None else int(process_index)
    count = jax.process_count() if process_count is None else int(process_count)
    fileio.makedirs(directory)
    _check_spec(directory, spec, pid)
    _barrier(f"lvt_jax.encode.{spec['split']}.spec")  # no shard before its spec
    ranges = codes_lib.shard_ranges(spec["num_videos"], spec["videos_per_shard"])
    names = [codes_lib.shard_name(s, len(ranges)) for s in range(len(ranges))]
    done: dict = {"encoded": [], "skipped": []}
    dtype = np.dtype(getattr(encoder, "dtype", codes_lib.CODE_DTYPE))
    if codes_lib.read_json(fileio.join(directory, "metadata.json")) is not None and all(
            fileio.exists(fileio.join(directory, n)) for n in names):
        done["skipped"] = list(range(pid, len(ranges), count))
        log.info("encode: %s already complete (%d shards)", directory, len(ranges))
        return done
    for s in range(pid, len(ranges), count):
        path = fileio.join(directory, names[s])
        if fileio.exists(path):
            done["skipped"].append(s)
            continue
        t0 = time.perf_counter()
        start, stop = ranges[s]
        codes = encoder.encode_videos(_prefetch(videos.__getitem__, range(start, stop)))
        codes_lib.write_shard(path, codes, dtype)
        done["encoded"].append(s)
        log.info("encode: %s shard %d/%d (%d videos) in %.1fs", spec["split"], s + 1,
                 len(ranges), stop - start, time.perf_counter() - t0)
    _barrier(f"lvt_jax.encode.{spec['split']}.shards")
    if pid == 0:
        missing = [n for n in names if not fileio.exists(fileio.join(directory, n))]
        if missing:
            raise RuntimeError(f"encode: shards {missing[:3]} of {directory} are missing after "
                               "every process finished; rerun --mode=encode to redo them.")
        for f in fileio.listdir(directory):  # leftovers of interrupted writes
            if ".tmp-" in f:
                fileio.remove(fileio.join(directory, f))
        counts = getattr(videos, "frame_counts", None)  # videos may vary in length
        if counts is None:
            counts = np.full(1, spec["video_shape"][0])
        extra = {}
        labels = getattr(videos, "labels", None)
        if labels is not None:  # class ids travel with the codes (class-conditional stage 2)
            codes_lib.write_labels(directory, labels)
            extra["labels"] = codes_lib.LABELS_FILE
        codes_lib.write_json(fileio.join(directory, "metadata.json"), dict(
            spec, shards=names, frame_shape=list(encoder.code_shape),
            min_frames=int(np.min(counts)), max_frames=int(np.max(counts)), dtype=dtype.name,
            **({} if codebook_size is None else {"codebook_size": int(codebook_size)}),
            **(extra_meta or {}), **extra))
    _barrier(f"lvt_jax.encode.{spec['split']}.metadata")
    return done


def run(config: Any, workdir: str, splits: tuple[str, ...] = SPLITS) -> dict:
    """Encodes `splits` with the latest stage-1 checkpoint in `workdir`; resumable."""
    from lvt_jax import trainer
    from lvt_jax.data import pipeline
    from lvt_jax.stages.vqvae import VQVAEStage
    mesh = shd.make_mesh(config.mesh)
    stage = VQVAEStage(config)
    state, step = trainer.restore_state(stage, mesh, workdir)
    variables = shd.fetch({"params": state.params, **state.extra})
    del state
    encoder = FrameEncoder(stage.model, variables, int(config.encode.batch_size),
                           stage.image_shape)
    out = {}
    for split in splits:
        videos = pipeline.load_videos(config.data, split)
        spec = split_spec(config, split, len(videos), videos.video_shape, step)
        t0 = time.perf_counter()
        out[split] = encode_split(encoder, videos, codes_lib.split_dir(workdir, split), spec,
                                  codebook_size=int(config.vqvae.model.codebook_size))
        log.info("encode: %s: %d videos, %d shards encoded now, %d already done, %.1fs",
                 split, len(videos), len(out[split]["encoded"]), len(out[split]["skipped"]),
                 time.perf_counter() - t0)
    return out
