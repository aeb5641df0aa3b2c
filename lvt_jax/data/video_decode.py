"""One video file -> uint8 frames [T, size, size, 3]: PyAV decode, centre crop, Lanczos resize.

Why this exists: Kinetics-600 ships as hundreds of thousands of short YouTube clips of
every resolution and frame rate, and a few percent of them are broken. The paper's
preprocessing (specification, "Data conventions") is: centre-crop to a square, resize to
64x64 with Lanczos, keep every frame at the native rate. Here that is one pure function
per clip, and every way a clip can be unusable raises `ClipError` with a short `reason`
(a key of `REASONS`) so a dataset build can skip it, count it and list it, never stop.
"""

from __future__ import annotations

import math
import os

import numpy as np

# Why a clip is skipped (also the column values of the build's skipped-clips file).
REASONS = {
    "decode_error": "the file cannot be opened or holds no decodable video stream",
    "truncated": "decoding stops early (an error mid-stream, or far fewer frames than declared)",
    "too_short": "fewer frames than the minimum clip length",
    "missing": "listed in the CSV annotations but no video file was found",
}

# A clip is truncated when it decodes to fewer than this fraction of its declared frames.
_TRUNCATED_FRACTION = 0.9


class ClipError(Exception):
    """A clip that cannot be used; `reason` is a key of REASONS, the message says why."""

    def __init__(self, reason: str, message: str):
        if reason not in REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; known: {sorted(REASONS)}")
        super().__init__(message)
        self.reason = reason


def crop_box(width: int, height: int) -> tuple[int, int, int]:
    """(left, top, side) of the central square of a width x height picture."""
    side = min(int(width), int(height))
    return (int(width) - side) // 2, (int(height) - side) // 2, side


def center_crop_resize(image, size: int) -> np.ndarray:
    """PIL image of any shape -> uint8 [size, size, 3]: the central square, Lanczos-resized.

    Lanczos is antialiased: downscaling (e.g. 340x256 -> 64x64) averages over the source
    pixels instead of sampling them, as the reference's conversion script does.
    """
    from PIL import Image

    left, top, side = crop_box(*image.size)
    square = image.convert("RGB").crop((left, top, left + side, top + side))
    if side != size:
        square = square.resize((size, size), resample=Image.Resampling.LANCZOS)
    return np.asarray(square, dtype=np.uint8)


def resample_indices(times: np.ndarray, target_fps: float) -> np.ndarray:
    """Frame indices that show the video at `target_fps`: output frame k (time k / fps after
    the first frame) is the latest source frame shown at or before that time.

    Works for variable frame rates (it reads timestamps, not a nominal rate); above the
    native rate frames repeat, below it they are dropped evenly.
    """
    times = np.asarray(times, np.float64)
    if times.size == 0:
        return np.zeros((0,), np.int64)
    if not target_fps > 0:
        raise ValueError(f"target frame rate must be > 0, got {target_fps}.")
    rel = times - times[0]
    count = int(math.floor(rel[-1] * target_fps + 1e-6)) + 1
    targets = np.arange(count) / float(target_fps)
    order = np.argsort(rel, kind="stable")
    pos = np.searchsorted(rel[order], targets + 1e-6, side="right") - 1
    return order[np.maximum(pos, 0)]


def _open(path: str):
    import av
    try:
        return av.open(path)
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ClipError("decode_error", f"cannot open: {e}") from None


def _header(container) -> tuple[object, dict]:
    """(the first video stream, its header: width, height, fps and declared frame count,
    0 when unknown)."""
    if not container.streams.video:
        raise ClipError("decode_error", "no video stream")
    stream = container.streams.video[0]
    rate = float(stream.average_rate) if stream.average_rate else 0.0
    return stream, dict(width=int(stream.codec_context.width),
                        height=int(stream.codec_context.height), fps=rate,
                        frames=int(stream.frames or 0))


def probe(path: str | os.PathLike) -> dict:
    """A video file's header, nothing decoded (see `_header`). Raises ClipError."""
    with _open(os.fspath(path)) as container:
        return _header(container)[1]


def _enough(times: list[float], max_frames: int | None, target_fps: float | None) -> bool:
    """Whether the frames decoded so far give `max_frames` output frames."""
    if max_frames is None:
        return False
    if target_fps is None:
        return len(times) >= max_frames
    span = times[-1] - times[0]
    return not math.isnan(span) and span >= (max_frames - 1) / float(target_fps)


def decode_clip(path: str | os.PathLike, size: int = 64, *, target_fps: float | None = None,
                min_frames: int = 16, threads: int = 1,
                max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decodes a video file -> (uint8 frames [T, size, size, 3], frame rate of the frames).

    target_fps None keeps every frame at the native rate (the paper's setting). Raises
    ClipError('decode_error' | 'truncated' | 'too_short') for unusable clips.
    `max_frames`: decode only the start of the video, up to that many output frames (a
    priming video needs a few frames, not the whole file).
    """
    import av

    path = os.fspath(path)
    if max_frames is not None and int(max_frames) < 1:
        raise ValueError(f"max_frames={max_frames} must be >= 1")
    frames: list[np.ndarray] = []
    times: list[float] = []
    stopped_early = False
    with _open(path) as container:
        stream, header = _header(container)
        stream.thread_type = "AUTO"
        stream.codec_context.thread_count = int(threads)
        declared, rate = header["frames"], header["fps"]
        try:
            for frame in container.decode(stream):
                frames.append(center_crop_resize(frame.to_image(), size))
                times.append(frame.time if frame.time is not None else float("nan"))
                if _enough(times, max_frames, target_fps):
                    stopped_early = True
                    break
        except (av.error.FFmpegError, OSError, ValueError) as e:
            if not frames:
                raise ClipError("decode_error", f"no frame decodes: {e}") from None
            raise ClipError("truncated", f"decoding failed after {len(frames)} frames"
                            + (f" of {declared}" if declared else "") + f": {e}") from None
    if not frames:
        raise ClipError("decode_error", "the video stream holds no frames")
    if declared and not stopped_early and len(frames) < _TRUNCATED_FRACTION * declared:
        raise ClipError("truncated", f"decoded {len(frames)} of {declared} declared frames")
    video = np.stack(frames)
    t = np.asarray(times, np.float64)
    if np.isnan(t).any():  # no timestamps: assume the nominal constant rate
        t = np.arange(len(frames)) / (rate or 25.0)
    if rate <= 0 and len(t) > 1 and t[-1] > t[0]:
        rate = (len(t) - 1) / (t[-1] - t[0])
    if target_fps is not None:
        video = video[resample_indices(t, float(target_fps))]
        rate = float(target_fps)
    if max_frames is not None:
        video = video[:int(max_frames)]
    if len(video) < int(min_frames):
        raise ClipError("too_short", f"{len(video)} frames, fewer than {min_frames}")
    return video, rate
