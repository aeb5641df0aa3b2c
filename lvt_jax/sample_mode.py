"""--mode=sample: continue videos with the trained stages; write mp4, gif and a PNG grid.

Priming frames come from the test split (videos `first_video ..`, their first n_prime
frames) or from `config.sample.prime` (a video file, image or folder of frames: resized
and centre-cropped like the datasets). Writes WORKDIR/samples/:

  sample_NNNN.mp4 / .gif   the whole generated clip (priming frames reconstructed)
  grid.png                 per video: a row of real frames (when there are), then the
                           row generated from them
  samples.npz, samples.json  the frames and codes, and the settings that made them
                           (for a user's video: the frames, frame rate and crop used)

Each run writes a fresh, complete set: the files go to a staging folder that then
replaces WORKDIR/samples/ whole, so no sample of an earlier run is left beside the new
ones (a previous folder holding files this mode does not write is kept, renamed).
A progress bar counts slices generated (the sampler reports from inside its compiled loop).
"""
from __future__ import annotations

import logging
import os
import re
import time
from typing import Any

import jax
import numpy as np

from lvt_jax import fileio, media, metrics
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


def _too_few_frames(prime: str, info: dict, n_prime: int) -> ValueError:
    have = int(info["frames_read"])
    if info["kind"] == "image":
        return ValueError(f"sample.prime={prime!r} is a single image: one priming frame, but "
                          f"sample.n_prime={n_prime}. Pass --config.sample.n_prime=1, or a "
                          f"video / folder of at least {n_prime} images.")
    return ValueError(f"sample.prime={prime!r} has {have} frame(s), sample.n_prime={n_prime} "
                      f"are needed: pass a longer {info['kind']} or "
                      f"--config.sample.n_prime={have}.")


def priming_videos(config: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None,
                                         dict]:
    """(priming frames [N, n_prime, H, W, 3], real clips [N, T, H, W, 3] or None, class
    ids [N] or None, where the priming frames come from (for samples.json)).

    A user's video is decoded only up to the clip length T: n_prime frames prime the
    model, the first T (when there are) are shown as the real row of the grid.
    """
    s = config.sample
    size = int(config.data.image_size)
    T = int(config.data.clip_length)   # both systems' clip (LVT: its clip_shape[0], checked)
    n_prime = int(s.n_prime)
    if s.prime:
        frames, info = media.read_prime(s.prime, size, max_frames=T)
        if len(frames) < n_prime:
            raise _too_few_frames(s.prime, info, n_prime)
        real = frames[:T][None] if len(frames) >= T else None
        labels = None if int(s.label) < 0 else np.asarray([int(s.label)], np.int32)
        source = dict(path=s.prime, frames_used=[0, n_prime], **info)
        return frames[None, :n_prime], real, labels, source
    from lvt_jax.data import pipeline
    videos = pipeline.load_videos(config.data, "test")
    stop = min(len(videos), int(s.first_video) + int(s.num_videos))
    if stop <= int(s.first_video):
        raise ValueError(f"sample.first_video={s.first_video} is past the test split's "
                         f"{len(videos)} videos.")
    real = np.stack([np.asarray(videos[i])[:T] for i in range(int(s.first_video), stop)])
    labels = getattr(videos, "labels", None)
    labels = None if labels is None else np.asarray(labels[int(s.first_video):stop], np.int32)
    source = dict(kind="test split", dataset=str(config.data.name),
                  videos=[int(s.first_video), stop], frames_used=[0, n_prime])
    return real[:, :n_prime], real, labels, source


def run(config: Any, workdir: str) -> dict:
    from lvt_jax import generate
    s = config.sample
    out_dir = fileio.join(workdir, "samples")
    mesh = shd.make_mesh(config.mesh)
    prime, real, labels, source = priming_videos(config)  # bad input fails before compiling
    from lvt_jax.evaluate import check_checkpoints
    check_checkpoints(workdir, str(config.get("system", "lvt")), mode="sample")
    gen = generate.from_workdir(config, workdir, mesh)
    n = len(prime)
    progress = SliceProgress(gen.num_batches(n) * gen.slices_per_clip(),
                             enabled=bool(_progress_enabled(config)))
    gen.progress = progress
    t0 = time.perf_counter()
    videos, arrays = gen.generate(prime, jax.random.key(int(s.seed)),
                                  first_index=int(s.first_video), labels=labels)
    progress.close()
    seconds = time.perf_counter() - t0
    info = dict(system=gen.system, num_videos=n, seconds=round(seconds, 2),
                s_per_video=round(seconds / n, 3),
                n_prime=gen.n_prime, num_frames=gen.num_frames, sampler=gen.sampler,
                temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p),
                seed=int(s.seed), prime=s.prime or "test split", first_video=int(s.first_video),
                prime_source=source, checkpoints=getattr(gen, "steps", {}))
    pictures, extra_videos = {}, {}
    if gen.system == "hdr":  # its layers, and each video with its most-moving object frozen
        from lvt_jax.eval import hdr_pictures
        _, rgb, alphas = gen.render(arrays["static"][:1], arrays["background"][:1],
                                    arrays["dynamic"][:1])
        pictures["layers.png"] = hdr_pictures.layers_grid(videos[0], rgb[0], alphas[0])
        frozen, slot = hdr_pictures.frozen_videos(gen, arrays, gen.n_prime)
        extra_videos["frozen"] = frozen
        info["frozen_slot"] = [int(k) for k in slot]
    if jax.process_index() == 0:
        write_outputs(out_dir, videos, real, arrays, info, fps=float(s.fps),
                      pictures=pictures, extra_videos=extra_videos)
    log.info("sample: %d videos in %.1fs (%.2fs per video) -> %s", n, seconds, seconds / n,
             out_dir)
    return info


def _progress_enabled(config: Any) -> bool:
    section = config.hdr.predictor if config.get("system", "lvt") == "hdr" else config.transformer
    return bool(section.train.progress)


# Everything --mode=sample writes into WORKDIR/samples/ (and its temporary names).
OUTPUT_NAME = re.compile(r"((sample|frozen)_\d{4,}(\.tmp-\d+)?\.(mp4|gif)|"
                         r"(grid|layers)(\.tmp-\d+)?\.png|"
                         r"samples(\.tmp)?\.npz|samples\.json(\.tmp)?)")


def write_outputs(out_dir: str, videos: np.ndarray, real: np.ndarray | None,
                  arrays: np.ndarray | dict, info: dict, fps: float,
                  pictures: dict | None = None, extra_videos: dict | None = None) -> None:
    """Writes the complete set into a staging folder, then swaps it in for `out_dir` (a
    rename; in an object store the files are moved one by one).

    `arrays`: what samples.npz keeps besides the frames (LVT: the codes, int16; HDR: the
    latents); `pictures` name -> uint8 image; `extra_videos` name -> uint8 videos written
    as NAME_NNNN.mp4 / .gif (HDR's frozen-object videos)."""
    if not isinstance(arrays, dict):
        arrays = {"codes": np.asarray(arrays).astype(np.int16)}
    from lvt_jax.trainer import write_json
    out_dir = fileio.absolute(out_dir)
    parent, name = fileio.dirname(out_dir), fileio.basename(out_dir)
    for old in fileio.listdir(parent) if fileio.isdir(parent) else []:
        if re.fullmatch(re.escape(name) + r"\.(tmp|old)-\d+", old):  # an interrupted run's
            _retire(fileio.join(parent, old), out_dir)
    staging = fileio.join(parent, f"{name}.tmp-{os.getpid()}")
    fileio.makedirs(staging)
    for i, v in enumerate(videos):
        media.write_mp4(fileio.join(staging, f"sample_{i:04d}.mp4"), v, fps)
        media.write_gif(fileio.join(staging, f"sample_{i:04d}.gif"), v, fps)
    rows = []
    for i, v in enumerate(videos):
        if real is not None:
            rows.append(real[i][:len(v)])
        rows.append(v)
    media.write_png(fileio.join(staging, "grid.png"), metrics.image_grid(rows))
    for file, image in (pictures or {}).items():
        media.write_png(fileio.join(staging, file), image)
    for prefix, clips in (extra_videos or {}).items():
        for i, v in enumerate(clips):
            media.write_mp4(fileio.join(staging, f"{prefix}_{i:04d}.mp4"), v, fps)
            media.write_gif(fileio.join(staging, f"{prefix}_{i:04d}.gif"), v, fps)
    with fileio.staged_write(fileio.join(staging, "samples.npz"), keep_ext=True) as tmp:
        np.savez_compressed(tmp, videos=videos, **arrays,
                            **({} if real is None else {"real": real}))
    write_json(fileio.join(staging, "samples.json"),
               dict(info, files=sorted(fileio.listdir(staging))))
    _replace_folder(staging, out_dir)


def _replace_folder(new: str, dest: str) -> None:
    """Puts folder `new` at `dest`, retiring the previous `dest`."""
    if not fileio.exists(dest):
        fileio.rename(new, dest)
        return
    old = f"{dest}.old-{os.getpid()}"
    fileio.rename(dest, old)
    fileio.rename(new, dest)
    _retire(old, dest)


def _retire(folder: str, dest: str) -> None:
    """Deletes a previous samples folder holding only what this mode writes; one holding
    anything else is kept beside `dest` under a dated name (nothing of the user's is lost)."""
    foreign = sorted(n for n in fileio.listdir(folder) if not OUTPUT_NAME.fullmatch(n))
    if not foreign:
        fileio.rmtree(folder)
        return
    kept = f"{dest}.previous-{time.strftime('%Y%m%d-%H%M%S')}"
    while fileio.exists(kept):
        kept += "_"
    fileio.rename(folder, kept)
    log.warning("sample: %s held files --mode=sample does not write (%s); that folder was "
                "kept as %s, the new samples are in %s.", dest, ", ".join(foreign[:5]), kept,
                dest)
