"""The human-readable side of --mode=evaluate: report.md, a per-trial FVD plot, example grids.

The plot is drawn with PIL (already a dependency) rather than matplotlib: a bar per trial
is all it needs.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from lvt_jax import fileio
from lvt_jax.metrics import image_grid

FVD_COLOR, STAR_COLOR, AXIS_COLOR, GRID_COLOR = (52, 101, 164), (230, 120, 30), (0, 0, 0), (220, 220, 220)


def _nice_step(top: float, ticks: int = 5) -> float:
    raw = max(top, 1e-9) / ticks
    mag = 10 ** np.floor(np.log10(raw))
    return float(min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)))


def trial_plot(fvd: list[float], fvd_star: list[float], width: int = 520,
               height: int = 300) -> np.ndarray:
    """uint8 [height, width, 3]: FVD (bars) and FVD* (dots) per trial, dashed line at the mean."""
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    left, right, top, bottom = 56, width - 12, 28, height - 34
    step = _nice_step(max(max(fvd), max(fvd_star), 1e-6) * 1.05)
    y_max = step * np.ceil(max(max(fvd), max(fvd_star), 1e-6) * 1.05 / step)

    def y_of(v: float) -> float:
        return bottom - (bottom - top) * v / y_max

    for k in range(int(round(y_max / step)) + 1):
        y = y_of(k * step)
        d.line([(left, y), (right, y)], fill=GRID_COLOR)
        d.text((4, y - 6), f"{k * step:g}", fill=AXIS_COLOR, font=font)
    n = len(fvd)
    slot = (right - left) / n
    for i, (a, b) in enumerate(zip(fvd, fvd_star)):
        x0 = left + i * slot + slot * 0.2
        x1 = left + (i + 1) * slot - slot * 0.2
        d.rectangle([x0, y_of(a), x1, bottom], fill=FVD_COLOR)
        cx, cy = (x0 + x1) / 2, y_of(b)
        d.ellipse([cx - 4, cy - 4, cx + 4, cy + 4], fill=STAR_COLOR)
        if n <= 20 or i % max(1, n // 10) == 0:
            d.text((cx - 3, bottom + 6), str(i + 1), fill=AXIS_COLOR, font=font)
    mean_y = y_of(float(np.mean(fvd)))
    for x in np.arange(left, right, 8):
        d.line([(x, mean_y), (min(x + 4, right), mean_y)], fill=(200, 30, 30), width=1)
    d.line([(left, top), (left, bottom), (right, bottom)], fill=AXIS_COLOR)
    d.text((left, 8), f"FVD per trial (bars, mean {np.mean(fvd):.1f} dashed); "
           f"FVD* (dots, mean {np.mean(fvd_star):.1f})", fill=AXIS_COLOR, font=font)
    d.text(((left + right) / 2 - 14, height - 14), "trial", fill=AXIS_COLOR, font=font)
    return np.asarray(img)


def example_grid(real: np.ndarray, recon: np.ndarray, generated: np.ndarray) -> np.ndarray:
    """Per example video three rows: real, stage-1 reconstruction, generated."""
    rows = []
    for r, c, g in zip(real, recon, generated):
        rows += [r, c, g]
    return image_grid(rows)


def _save_png(path: str, image: np.ndarray) -> None:
    with fileio.staged_write(path, keep_ext=True) as tmp:
        Image.fromarray(image).save(tmp)


def write(out_dir: str, results: dict, examples: tuple | None, n_prime: int) -> None:
    """report.md plus fvd_trials.png and examples.png in `out_dir`."""
    _save_png(fileio.join(out_dir, "fvd_trials.png"),
              trial_plot(results["fvd_trials"], results["fvd_star_trials"]))
    have_examples = examples is not None and len(examples[0]) > 0
    if have_examples:
        _save_png(fileio.join(out_dir, "examples.png"), example_grid(*examples))
    r = results
    lines = [
        f"# Evaluation: {r['dataset']} {r['split']} split",
        "",
        f"{r['num_trials']} trials of {r['num_videos']} videos ({r['num_distinct_videos']} "
        f"distinct clips); {r['n_prime']} priming + {r['num_frames'] - r['n_prime']} generated "
        f"frames. Features: {r['features']}.",
        "",
        f"Protocol: {r.get('protocol', 'unknown')}.",
        "",
        *([] if r.get("protocol", "standard") == "standard" else [
            "**Not comparable with published FVDs**: the published protocol is 16-frame "
            "clips, 256 videos per trial and the Kinetics-400 I3D in float32. These numbers "
            "compare runs evaluated the same way only.", ""]),
        "| metric | value |",
        "|---|---|",
        f"| FVD | {r['fvd_mean']:.2f} +- {r['fvd_std']:.2f} |",
        f"| FVD* (vs stage-1 reconstructions) | {r['fvd_star_mean']:.2f} +- "
        f"{r['fvd_star_std']:.2f} |",
        f"| PSNR (mean / best of {r['best_of_n']}) | {r['psnr']:.2f} / {r['psnr_best']:.2f} dB |",
        f"| SSIM (mean / best of {r['best_of_n']}) | {r['ssim']:.4f} / {r['ssim_best']:.4f} |",
        (f"| test bits per code | {r['bits_per_code']:.4f} ({r['bits_per_code_source']}) |"
         if "bits_per_code" in r else
         f"| test ELBO (nats per frame) | {r['elbo_nats_per_frame']:.4f} ({r['elbo_source']}) |"),
        "",
        "FVD* compares the samples with the stage-1 reconstructions of the same clips (what "
        "stage 1 can represent), so it measures stage 2's error alone; the gap to FVD "
        "reflects stage 1's own error. FVD std is over trials. PSNR/SSIM are over "
        f"the generated frames of the first {r['quality_videos']} clips.",
        "",
        "![FVD per trial](fvd_trials.png)",
        "",
    ]
    if have_examples:
        lines += [f"Examples (per video: real, stage-1 reconstruction, generated; the first "
                  f"{n_prime} frame(s) prime the model):", "", "![examples](examples.png)", ""]
    fileio.write_text(fileio.join(out_dir, "report.md"), "\n".join(lines))
