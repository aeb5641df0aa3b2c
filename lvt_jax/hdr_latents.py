"""--mode=encode for HDR: every video's stage-1 latents on disk (WORKDIR/hdr_latents/).

Stage 2 (the latent predictor) trains on these, never on pixels. Per video and frame the
record holds F float32 numbers (`layout` says which, kept in metadata.json):
  dynamic     [S, Dd]  the slots' time-varying latents (posterior means; slot 0 is the
                       background, the first two numbers of a slot its position);
  static      [K, Ds]  the object slots' per-frame time-independent estimates (stage 2
                       pools them over the priming frames, as sampling does);
  background  [Cb]     the background's static map averaged over the pixels the background
                       slot sees (a summary: stage 2 conditions on it, the map itself is
                       recomputed from the priming frames when decoding).
Videos are encoded in windows of `hdr.encode.window` frames with the slots (and their
reference frames) carried from one window to the next, so any length compiles once (the same recurrence as one pass).
Shards, restart and multi-process rules are those of LVT's codes (lvt_jax.encode).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lvt_jax import fileio
from lvt_jax import metrics as M
from lvt_jax import sharding as shd
from lvt_jax.data import codes as codes_lib
from lvt_jax.models.hdr.latents import frame_features, layout, num_features

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


def split_dir(workdir: str, split: str) -> str:
    from lvt_jax.stages.hdr_predictor import LATENTS_DIR
    return fileio.join(workdir, LATENTS_DIR, split)


class VideoLatentEncoder:
    """Batches of videos through the stage-1 encoder on this process's devices, window by
    window (the slots carried across windows); two compiled programs (first window and
    continuation) whatever the videos' lengths."""

    dtype = np.dtype("<f4")

    def __init__(self, model: Any, params: Any, batch_size: int, window: int,
                 image_shape: tuple):
        devices = jax.local_devices()
        n = len(devices)
        self.batch_size = max(n, -(-int(batch_size) // n) * n)
        self.window = int(window)
        self.image_shape = tuple(image_shape)
        mesh = Mesh(np.asarray(devices), ("batch",))
        replicated, split = NamedSharding(mesh, P()), NamedSharding(mesh, P("batch"))
        self._split = split
        self.params = jax.device_put(params, replicated)
        self.code_shape = (1, 1, num_features(layout(model.config)))

        def run(params, frames, state, continued):
            enc = model.apply({"params": params}, M.to_model_input(frames), state,
                              continued, method="encode")
            return frame_features(enc), enc["state"]

        self._first = jax.jit(lambda p, f: run(p, f, None, False),
                              in_shardings=(replicated, split), out_shardings=(split, split))
        self._next = jax.jit(lambda p, f, s: run(p, f, s, True),
                             in_shardings=(replicated, split, split),
                             out_shardings=(split, split))

    def encode_batch(self, videos: list[np.ndarray]) -> list[np.ndarray]:
        """Up to batch_size uint8 videos [T_i, H, W, 3] -> float32 [T_i, 1, 1, F] each."""
        lengths = [len(v) for v in videos]
        T = max(lengths)
        padded = np.zeros((self.batch_size, -(-T // self.window) * self.window,
                           *self.image_shape), np.uint8)
        for i, v in enumerate(videos):   # pad with the last frame (its outputs are dropped)
            padded[i, :len(v)] = v
            padded[i, len(v):] = v[-1]
        feats, slots = [], None
        for start in range(0, padded.shape[1], self.window):
            chunk = jax.device_put(padded[:, start:start + self.window], self._split)
            if slots is None:
                f, slots = self._first(self.params, chunk)
            else:
                f, slots = self._next(self.params, chunk, slots)
            feats.append(f)
        out = np.asarray(jnp.concatenate(feats, 1))
        return [out[i, :n, None, None, :].astype(self.dtype) for i, n in enumerate(lengths)]

    def encode_videos(self, videos: Iterable[np.ndarray]) -> list[np.ndarray]:
        out, batch = [], []
        for v in videos:
            v = np.asarray(v)
            if v.dtype != np.uint8 or v.shape[1:] != self.image_shape:
                raise ValueError(f"expected uint8 videos [T, {', '.join(map(str, self.image_shape))}]"
                                 f", got {v.dtype} {v.shape}; check data.image_size.")
            batch.append(v)
            if len(batch) == self.batch_size:
                out += self.encode_batch(batch)
                batch = []
        if batch:
            out += self.encode_batch(batch)
        return out


def run(config: Any, workdir: str, splits: tuple[str, ...] = SPLITS) -> dict:
    """Encodes `splits` with the latest HDR stage-1 checkpoint in `workdir`; resumable."""
    from lvt_jax import encode as encode_lib
    from lvt_jax import trainer
    from lvt_jax.data import pipeline
    from lvt_jax.stages.hdr_autoencoder import HDRAutoencoderStage
    mesh = shd.make_mesh(config.mesh)
    stage = HDRAutoencoderStage(config)
    state, step = trainer.restore_state(stage, mesh, workdir)
    params = shd.fetch(state.params)
    del state
    e = config.hdr.encode
    encoder = VideoLatentEncoder(stage.model, params, int(e.batch_size), int(e.window),
                                 stage.image_shape)
    lay = layout(config.hdr.model)
    out = {}
    for split in splits:
        videos = pipeline.load_videos(config.data, split)
        spec = encode_lib.split_spec(config, split, len(videos), videos.video_shape, step,
                                     fmt=codes_lib.LATENTS_FORMAT, stage="hdr_autoencoder",
                                     model=config.hdr.model.to_dict(),
                                     videos_per_shard=int(e.videos_per_shard))
        t0 = time.perf_counter()
        out[split] = encode_lib.encode_split(encoder, videos, split_dir(workdir, split), spec,
                                             extra_meta={"layout": lay})
        log.info("encode (HDR latents): %s: %d videos, %d shards encoded now, %d already "
                 "done, %.1fs", split, len(videos), len(out[split]["encoded"]),
                 len(out[split]["skipped"]), time.perf_counter() - t0)
    return out
