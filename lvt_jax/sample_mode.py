"""--mode=sample: continue videos with the trained stages; write mp4, gif and a PNG grid.

Priming frames come from the test split (videos `first_video ..`, their first n_prime
frames) or from `config.sample.prime` (a video file, image or folder of frames: resized
and centre-cropped like the datasets). Writes WORKDIR/samples/:

  sample_NNNN.mp4 / .gif   the whole generated clip (priming frames reconstructed)
  grid.png                 per video: a row of real frames (when there are), then the
                           row generated from them
  samples.npz, samples.json  the frames and codes, and the settings that made them

A progress bar counts slices generated (the sampler reports from inside its compiled loop).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import numpy as np

from lvt_jax import media, metrics
from lvt_jax import sharding as shd

log = logging.getLogger(__name__)


class SliceProgress:
    """tqdm bar of slices; the device may report a slice more than once (one per shard)."""

    def __init__(self, total: int, enabled: bool = True):
        self.total, self.count, self.batch = total, 0, 0
        self._seen: set = set()
        self.bar = None
        if enabled and jax.process_index() == 0:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc="sampling", unit="slice")

    def next_batch(self) -> None:
        self.batch += 1

    def __call__(self, slice_idx: int) -> None:
        key = (self.batch, int(slice_idx))
        if key in self._seen:
            return
        self._seen.add(key)
        self.count += 1
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def priming_videos(config: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(priming frames [N, n_prime, H, W, 3], real clips [N, T, H, W, 3] or None, class
    ids [N] or None)."""
    s = config.sample
    size = int(config.data.image_size)
    T = int(config.transformer.model.clip_shape[0])
    if s.prime:
        frames = media.read_frames(s.prime, size)
        if len(frames) < s.n_prime:
            raise ValueError(f"sample.prime={s.prime!r} has {len(frames)} frame(s); "
                             f"sample.n_prime={s.n_prime} are needed.")
        real = frames[:T][None] if len(frames) >= T else None
        labels = None if int(s.label) < 0 else np.asarray([int(s.label)], np.int32)
        return frames[None, :s.n_prime], real, labels
    from lvt_jax.data import pipeline
    videos = pipeline.load_videos(config.data, "test")
    stop = min(len(videos), int(s.first_video) + int(s.num_videos))
    if stop <= int(s.first_video):
        raise ValueError(f"sample.first_video={s.first_video} is past the test split's "
                         f"{len(videos)} videos.")
    real = np.stack([np.asarray(videos[i])[:T] for i in range(int(s.first_video), stop)])
    labels = getattr(videos, "labels", None)
    labels = None if labels is None else np.asarray(labels[int(s.first_video):stop], np.int32)
    return real[:, :s.n_prime], real, labels


def run(config: Any, workdir: str) -> dict:
    from lvt_jax.generate import Generator
    s = config.sample
    out_dir = os.path.join(workdir, "samples")
    mesh = shd.make_mesh(config.mesh)
    prime, real, labels = priming_videos(config)  # fails on bad input before any compile
    gen = Generator.from_workdir(config, workdir, mesh)
    n = len(prime)
    progress = SliceProgress(gen.num_batches(n) * gen.slices_per_clip(),
                             enabled=bool(config.transformer.train.progress))
    gen.progress = progress
    t0 = time.perf_counter()
    codes = []
    prime_codes = gen.encode(prime)
    for start in range(0, n, gen.batch_size):
        stop = min(n, start + gen.batch_size)
        codes.append(gen.sample_codes(
            prime_codes[start:stop], jax.random.key(int(s.seed)),
            first_index=int(s.first_video) + start,
            labels=None if labels is None else labels[start:stop]))
        progress.next_batch()
    progress.close()
    codes = np.concatenate(codes)
    videos = gen.decode(codes)
    seconds = time.perf_counter() - t0
    info = dict(num_videos=n, seconds=round(seconds, 2), s_per_video=round(seconds / n, 3),
                n_prime=gen.n_prime, num_frames=gen.num_frames, sampler=gen.sampler,
                temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p),
                seed=int(s.seed), prime=s.prime or "test split", first_video=int(s.first_video),
                checkpoints=getattr(gen, "steps", {}))
    if jax.process_index() == 0:
        write_outputs(out_dir, videos, real, codes, info, fps=float(s.fps))
    log.info("sample: %d videos in %.1fs (%.2fs per video) -> %s", n, seconds, seconds / n,
             out_dir)
    return info


def write_outputs(out_dir: str, videos: np.ndarray, real: np.ndarray | None, codes: np.ndarray,
                  info: dict, fps: float) -> None:
    from lvt_jax.trainer import write_json
    os.makedirs(out_dir, exist_ok=True)
    for i, v in enumerate(videos):
        media.write_mp4(os.path.join(out_dir, f"sample_{i:04d}.mp4"), v, fps)
        media.write_gif(os.path.join(out_dir, f"sample_{i:04d}.gif"), v, fps)
    rows = []
    for i, v in enumerate(videos):
        if real is not None:
            rows.append(real[i][:len(v)])
        rows.append(v)
    media.write_png(os.path.join(out_dir, "grid.png"), metrics.image_grid(rows))
    tmp = os.path.join(out_dir, "samples.tmp.npz")
    np.savez_compressed(tmp, videos=videos, codes=codes.astype(np.int16),
                        **({} if real is None else {"real": real}))
    os.replace(tmp, os.path.join(out_dir, "samples.npz"))
    write_json(os.path.join(out_dir, "samples.json"), info)
