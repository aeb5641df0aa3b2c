"""Reading a user's priming video and writing generated videos (mp4, gif, png).

Reading accepts any video format PyAV (FFmpeg) decodes, a single image, or a folder of
images (sorted by name); frames are centre-cropped to a square and Lanczos-resized, as
the datasets are. Only the frames asked for are decoded: a priming video needs its first
few frames, and decoding a long phone video whole would take minutes. Paths go through
lvt_jax.fileio (a prime video in a bucket is read from a local copy); writing goes
through a temporary name and a rename (or one upload), so an interrupted run never
leaves a truncated file behind under the final name. mp4 is encoded in-process by PyAV: no ffmpeg
subprocess (forking a multithreaded JAX process is unsafe, and JAX warns at every fork).
"""
from __future__ import annotations

import fractions
import os

import numpy as np

from lvt_jax import fileio

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
VIDEO_EXAMPLES = ".mp4, .mov, .mkv, .webm, .avi, .gif (animated)"
FORMATS_HINT = (f"pass a video FFmpeg decodes ({VIDEO_EXAMPLES}, ...), an image "
                f"({', '.join(e for e in IMAGE_EXTENSIONS if e != '.gif')}) or a folder of "
                "images")


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"sample.prime: {path!r} cannot be read as an image ({e}); "
                         f"{FORMATS_HINT}.") from None
    return image


def _crop(width: int, height: int, size: int) -> dict:
    from lvt_jax.data import video_decode
    left, top, side = video_decode.crop_box(width, height)
    return dict(source_size=[int(width), int(height)],
                crop=dict(left=left, top=top, side=side), resized_to=int(size))


def read_prime(path: str, size: int, max_frames: int | None = None) -> tuple[np.ndarray, dict]:
    """A video file, image or folder of images -> (uint8 frames [T, size, size, 3], what was
    read: kind, source size, crop box, frames read, frame rate).

    At most `max_frames` frames are decoded (from the start).
    """
    if not fileio.exists(path):
        raise FileNotFoundError(f"sample.prime={path!r} does not exist; {FORMATS_HINT}.")
    with fileio.local_copy(path) as local:
        frames, info = _read_local_prime(local, size, max_frames)
    return frames, info


def _read_local_prime(path: str, size: int, max_frames: int | None) -> tuple[np.ndarray, dict]:
    from lvt_jax.data import video_decode
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f"sample.prime folder {path!r} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)}).")
        names = names[:max_frames] if max_frames else names
        images = [_open_image(os.path.join(path, n)) for n in names]
        frames = np.stack([video_decode.center_crop_resize(im, size) for im in images])
        info = dict(kind="image folder", frames_read=len(frames), first=names[0],
                    last=names[-1], **_crop(*images[0].size, size))
        return frames, info
    if path.lower().endswith(IMAGE_EXTENSIONS) and not path.lower().endswith(".gif"):
        image = _open_image(path)
        return (video_decode.center_crop_resize(image, size)[None],
                dict(kind="image", frames_read=1, **_crop(*image.size, size)))
    try:
        header = video_decode.probe(path)
        frames, fps = video_decode.decode_clip(path, size, min_frames=1, max_frames=max_frames)
    except video_decode.ClipError as e:
        raise ValueError(f"sample.prime={path!r} cannot be read as a video ({e}); "
                         f"{FORMATS_HINT}.") from None
    info = dict(kind="video", frames_read=len(frames), fps=round(float(fps), 3),
                frames_in_file=header["frames"] or None,
                **_crop(header["width"], header["height"], size))
    return frames, info


def _atomic(path: str, write) -> None:
    with fileio.staged_write(path, keep_ext=True) as tmp:
        write(tmp)


def write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
    """uint8 [T, H, W, 3] -> H.264 mp4 (yuv420p, plays everywhere; H and W must be even)."""
    import av
    frames = np.asarray(frames, np.uint8)
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"mp4 (yuv420p) needs even frame sizes, got {h}x{w}.")

    def write(tmp):
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("libx264",
                                          rate=fractions.Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": "5"}  # near-lossless: the samples are small
            for f in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            container.mux(stream.encode())  # flush
    _atomic(path, write)


def write_gif(path: str, frames: np.ndarray, fps: float) -> None:
    """uint8 [T, H, W, 3] -> looping gif."""
    from PIL import Image
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    _atomic(path, lambda tmp: images[0].save(tmp, format="GIF", save_all=True,
                                             append_images=images[1:], loop=0,
                                             duration=int(round(1000 / fps))))


def write_png(path: str, image: np.ndarray) -> None:
    from PIL import Image
    _atomic(path, lambda tmp: Image.fromarray(np.asarray(image, np.uint8)).save(tmp, format="PNG"))


def read_video(path: str) -> np.ndarray:
    """All frames of a written mp4/gif as uint8 [T, H, W, 3] (for checks and tests)."""
    import av
    with fileio.local_copy(path) as local, av.open(local) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
