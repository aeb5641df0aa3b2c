"""Reading a user's priming video and writing generated videos (mp4, gif, png).

Reading accepts any video format PyAV decodes, a single image, or a folder of images
(sorted by name); frames are centre-cropped to a square and Lanczos-resized, as the
datasets are. Writing goes through a temporary name and a rename, so an interrupted run
never leaves a truncated file behind under the final name.
"""
from __future__ import annotations

import os
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def read_frames(path: str, size: int, max_frames: int | None = None) -> np.ndarray:
    """A video file, image or folder of images -> uint8 [T, size, size, 3]."""
    from PIL import Image

    from lvt_jax.data import video_decode
    if not os.path.exists(path):
        raise FileNotFoundError(f"sample.prime={path!r} does not exist; pass a video file, an "
                                "image or a folder of images.")
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS))
        if not names:
            raise ValueError(f"sample.prime folder {path!r} holds no images "
                             f"({', '.join(IMAGE_EXTENSIONS)}).")
        names = names[:max_frames] if max_frames else names
        frames = [video_decode.center_crop_resize(Image.open(os.path.join(path, n)), size)
                  for n in names]
        return np.stack(frames)
    if path.lower().endswith(IMAGE_EXTENSIONS) and not path.lower().endswith(".gif"):
        return video_decode.center_crop_resize(Image.open(path), size)[None]
    try:
        frames, _ = video_decode.decode_clip(path, size, min_frames=1)
    except video_decode.ClipError as e:
        raise ValueError(f"sample.prime={path!r} cannot be read as a video: {e}") from None
    return frames[:max_frames] if max_frames else frames


def _atomic(path: str, write) -> None:
    base, ext = os.path.splitext(path)
    tmp = f"{base}.tmp-{os.getpid()}{ext}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_mp4(path: str, frames: np.ndarray, fps: float) -> None:
    """uint8 [T, H, W, 3] -> H.264 mp4 (yuv420p, plays everywhere)."""
    import imageio.v2 as imageio

    def write(tmp):
        with imageio.get_writer(tmp, fps=fps, codec="libx264", quality=9,
                                macro_block_size=1, pixelformat="yuv420p",
                                ffmpeg_log_level="error") as w:
            for f in frames:
                w.append_data(np.asarray(f, np.uint8))
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
    with av.open(path) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

