"""The notebooks run (headless, in their SMOKE mode, on the session's tiny runs), show
what they promise, turn bad input into one sentence, and are committed stripped."""
import html
import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

from lvt_jax import media
from lvt_jax import notebook as nb
from lvt_jax.tools import notebooks as tool
from tests import nbrun
from tests.helpers import tiny_config

ROOT = nbrun.ROOT


@pytest.fixture(scope="module")
def kernels(tmp_path_factory):
    return nbrun.kernel_dir(str(tmp_path_factory.mktemp("kernels")))


def _videos_shown(executed) -> list[str]:
    """The titles of the videos the notebook displayed, in order."""
    return [html.unescape(t) for t in re.findall(
        r'src="data:video/mp4;base64,[^"]+"></video><br><small>([^<]*)</small>',
        nbrun.outputs_text(executed))]


def _error_lines(err: nbrun.CellExecutionError) -> list[str]:
    """What the failing cell showed for its error."""
    cell = next(c for c in err.notebook.cells
                if any(o.output_type == "error" for o in c.get("outputs", [])))
    out = next(o for o in cell.outputs if o.output_type == "error")
    return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in out.traceback]


# --- executed notebooks -------------------------------------------------------------------
def test_quickstart_runs_both_stages_samples_and_evaluates(pipeline_run, tiny_data_dir,
                                                           kernels, tmp_path):
    """On a copy of the session's tiny LVT run: the training cells resume it (evaluating
    both stages), sampling writes and shows real next to generated videos, and the
    evaluation writes eval.json and shows the report."""
    _, workdir = pipeline_run
    work = str(tmp_path / "quickstart")
    shutil.copytree(workdir, work)
    executed = nbrun.execute("quickstart.ipynb",
                             dict(SMOKE=True, WORKDIR=work, DATA_DIR=tiny_data_dir), kernels)
    text = nbrun.outputs_text(executed)
    assert "12 training and 4 test videos" in text
    assert re.search(r"stage 1 at step 4: test PSNR \d+\.\d dB", text)
    assert re.search(r"stage 2 at step 4: test \d+\.\d+ bits per code \(a uniform guess: 5\)",
                     text)
    shown = _videos_shown(executed)
    assert shown[:4] == [f"test video {i}" for i in range(4)]
    assert [s for s in shown if s.startswith(("real", "generated"))] == [
        f"{k} {i}" for i in range(4) for k in ("real", "generated")]
    with open(os.path.join(work, "eval", "eval.json")) as f:
        results = json.load(f)
    assert results["features"].startswith("stand-in") and results["num_trials"] == 2
    assert results["protocol"].startswith("non-standard")
    assert f"FVD {results['fvd_mean']:.1f}" in text
    assert "# Evaluation: synthetic_pushing test split" in text and "Not comparable" in text
    assert text.count('src="data:image/png;base64,') == 3  # reconstructions, 2 report plots


def test_continue_your_video_imports_reference_weights_and_samples(kernels, tmp_path):
    """Reference-release state dicts (.npz) of the tiny models are imported into a fresh
    workdir and the example clip is continued: NUM_SAMPLES different samples shown and
    written, the clip's priming frame kept."""
    from configs import demo
    from tests.test_import_reference import (_write_npz, random_vqvae_state,
                                             reference_transformer_state)
    c = demo.get_config("tiny")
    parts = zip(("netE", "netG", "netC"), random_vqvae_state(c.vqvae.model))
    vqvae = ",".join(_write_npz(tmp_path / f"{n}.npz", sd, 9) for n, sd in parts)
    transformer = _write_npz(tmp_path / "vt.npz",
                             reference_transformer_state(c.transformer.model), 9)
    out = tmp_path / "out"
    params = dict(SMOKE=True, WORKDIR=str(tmp_path / "work"), REFERENCE_VQVAE=vqvae,
                  REFERENCE_TRANSFORMER=transformer, NUM_SAMPLES=3, SEED=1,
                  OUTPUT_DIR=str(out))
    executed = nbrun.execute("continue_your_video.ipynb", params, kernels)
    text = nbrun.outputs_text(executed)
    assert "carphone_pristine.mp4: video, 4 frames read (source 176x144)" in text
    assert "imported vqvae, transformer" in text and "vqvae at step 10" in text
    assert _videos_shown(executed)[1:] == ["real", "sample 0", "sample 1", "sample 2"]
    saved = np.load(out / "samples.npz")
    videos = saved["videos"]
    assert videos.shape == (3, 4, 64, 64, 3)
    assert all(not np.array_equal(videos[0, 1:], v[1:]) for v in videos[1:])
    np.testing.assert_array_equal(videos[0, 0], videos[1, 0])  # the same primed frame
    assert sorted(p.name for p in out.glob("sample_*.mp4")) == [
        f"sample_{i:04d}.mp4" for i in range(3)]
    real = saved["real"][0]
    clip, _ = media.read_prime(nb.example_clip(), 64, max_frames=4)
    np.testing.assert_array_equal(real, clip)


def test_hdr_decomposition_shows_layers_swaps_and_frozen_motion(hdr_pipeline_run,
                                                               tiny_data_dir, kernels):
    _, workdir = hdr_pipeline_run
    executed = nbrun.execute("hdr_decomposition.ipynb",
                             dict(SMOKE=True, WORKDIR=workdir, DATA_DIR=tiny_data_dir),
                             kernels)
    text = nbrun.outputs_text(executed)
    assert "training the HDR demo" not in text  # the session's run had both stages
    assert "hdr_autoencoder at step 4, hdr_predictor at step 4" in text
    assert "A with B's objects" in _videos_shown(executed)
    assert re.search(r"frozen slot: [12] in the real video, [12] in the sample", text)
    assert text.count('src="data:image/png;base64,') == 1  # the layers grid


@pytest.mark.parametrize("case", ["not a video", "too short", "no checkpoints"])
def test_bad_input_is_one_sentence_in_the_notebook(case, pipeline_run, kernels, tmp_path):
    _, workdir = pipeline_run
    params = dict(SMOKE=True, WORKDIR=workdir, OUTPUT_DIR=str(tmp_path / "out"))
    if case == "not a video":
        (tmp_path / "holiday.mp4").write_text("not a video")
        params["VIDEO"] = str(tmp_path / "holiday.mp4")
        want = "holiday.mp4 is not a video this notebook can read"
    elif case == "too short":
        params.update(CONFIG="kinetics600", VIDEO=_short_video(tmp_path, 1))  # tiny: n_prime 2
        want = "short.mp4 has 1 frame(s) but the model is primed with 2"
    else:
        params["WORKDIR"] = str(tmp_path)
        want = f"WORKDIR {str(tmp_path)!r} holds no checkpoint of the LVT stage 'vqvae'"
    with pytest.raises(nbrun.CellExecutionError) as err:
        nbrun.execute("continue_your_video.ipynb", params, kernels)
    lines = _error_lines(err.value)
    assert len(lines) == 1 and lines[0].startswith(want), lines
    assert "Traceback" not in lines[0] and ".py" not in lines[0]


# --- the package's notebook API (no kernel) -----------------------------------------------------
def _short_video(folder, frames: int) -> str:
    path = os.path.join(str(folder), "short.mp4")
    media.write_mp4(path, np.full((frames, 32, 48, 3), 90, np.uint8), 4)
    return path


def test_read_video_errors_are_sentences(tmp_path, tiny_data_dir):
    config = tiny_config(tiny_data_dir)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(nb.NotebookError, match="notes.txt is not a video this notebook can"):
        nb.read_video(str(tmp_path / "notes.txt"), config)
    with pytest.raises(nb.NotebookError, match="does not exist"):
        nb.read_video(str(tmp_path / "missing.mp4"), config)
    config.sample.n_prime = 3
    with pytest.raises(nb.NotebookError, match="has 2 frame.s. but the model is primed with 3"):
        nb.read_video(_short_video(tmp_path, 2), config)
    frames, info = nb.read_video(_short_video(tmp_path, 3), config)
    assert frames.shape == (3, 64, 64, 3) and info["source_size"] == [48, 32]
    assert nb.NotebookError("one line")._render_traceback_() == [
        "\x1b[1;31mone line\x1b[0m"]


def test_missing_stage_names_the_stage_and_the_system(pipeline_run, hdr_pipeline_run,
                                                      tmp_path):
    cfg, workdir = pipeline_run
    hdr_cfg, hdr_workdir = hdr_pipeline_run
    assert nb.missing_stage(cfg, workdir) is None
    assert nb.missing_stage(hdr_cfg, hdr_workdir) is None
    assert "HDR stage 'hdr_autoencoder'" in nb.missing_stage(hdr_cfg, workdir)
    shutil.copytree(os.path.join(workdir, "vqvae"), tmp_path / "vqvae")
    assert "LVT stage 'transformer'" in nb.missing_stage(cfg, str(tmp_path))
    with pytest.raises(nb.NotebookError, match="--mode=train_transformer"):
        nb.load_generator(cfg, str(tmp_path))


def test_swap_static_takes_one_part_of_the_other_video():
    rng = np.random.default_rng(0)
    lat = {"static": rng.normal(size=(3, 2, 4)), "background": rng.normal(size=(3, 8, 8, 2)),
           "dynamic": rng.normal(size=(3, 5, 3, 6))}
    objects = nb.swap_static(lat, 0, 2, "objects")
    np.testing.assert_array_equal(objects["static"], lat["static"][2:3])
    np.testing.assert_array_equal(objects["background"], lat["background"][0:1])
    np.testing.assert_array_equal(objects["dynamic"], lat["dynamic"][0:1])
    bg = nb.swap_static(lat, 1, 0, "background")
    np.testing.assert_array_equal(bg["background"], lat["background"][0:1])
    np.testing.assert_array_equal(bg["static"], lat["static"][1:2])
    with pytest.raises(nb.NotebookError, match="swap 'objects' or 'background'"):
        nb.swap_static(lat, 0, 1, "motion")


def test_get_config_by_name_and_bad_name():
    c = nb.get_config("hdr_demo:tiny", data_dir="/some/where", name="")
    assert c.system == "hdr" and c.data.data_dir == "/some/where"
    assert c.data.name == "synthetic_pushing"  # empty overrides are ignored
    with pytest.raises(nb.NotebookError, match=r"choose one of \[.*'demo'.*\]"):
        nb.get_config("nope")
    with pytest.raises(nb.NotebookError, match="config 'demo:huge'"):
        nb.get_config("demo:huge")


def test_set_controls_checks_values():
    class Gen:
        controls = None
    g = Gen()
    nb.set_controls(g, 0.5, 3, 0.9)
    assert float(g.controls.temperature) == 0.5 and int(g.controls.top_k) == 3
    with pytest.raises(nb.NotebookError, match="top_p"):
        nb.set_controls(g, 1.0, 0, 0.0)


# --- committed form -------------------------------------------------------------------------
def test_notebooks_are_stripped_and_linked_from_one_address():
    assert [os.path.basename(p) for p in tool.notebook_paths()] == [
        "quickstart.ipynb", "continue_your_video.ipynb", "hdr_decomposition.ipynb"]
    assert tool.problems() == []


def test_the_check_finds_outputs_and_stale_addresses(tmp_path):
    for name in ("pyproject.toml", "README.md", "notebooks"):
        src = os.path.join(ROOT, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, tmp_path / name)
    path = tmp_path / "notebooks" / "quickstart.ipynb"
    book = json.loads(path.read_text())
    cell = next(c for c in book["cells"] if c["cell_type"] == "code")
    cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}]
    cell["execution_count"] = 3
    path.write_text(json.dumps(book))
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("github.com/OWNER/lvt_jax",
                                                       "github.com/someone/fork"))
    found = tool.problems(str(tmp_path))
    assert any("quickstart.ipynb: holds outputs" in p for p in found)
    assert sum("REPOSITORY line is not https://github.com/someone/fork" in p
               for p in found) == 3
    assert any(p.startswith("README.md: the notebook links") for p in found)
    tool.write(str(tmp_path))  # what a maintainer runs after setting the address
    assert tool.problems(str(tmp_path)) == []
    readme = (tmp_path / "README.md").read_text()
    assert ("https://colab.research.google.com/github/someone/fork/blob/main/notebooks/"
            "quickstart.ipynb") in readme
    assert 'REPOSITORY = \\"https://github.com/someone/fork\\"' in path.read_text()


def test_colab_setup_installs_the_pins_with_the_runtimes_jax(monkeypatch):
    sys.path.insert(0, os.path.join(ROOT, "notebooks"))
    try:
        import colab_setup
    finally:
        sys.path.pop(0)
    pins = colab_setup.pins(ROOT)
    assert pins["jax"] == pins["jaxlib"] and pins["scikit-video"] == "1.1.11"
    assert "nbclient" not in pins and "ipykernel" not in pins  # Colab keeps its own kernel
    assert colab_setup.missing(pins) == []   # this environment is the pinned one
    assert colab_setup.missing({"numpy": "0.0.1"}) == [
        f"numpy==0.0.1 (have {np.__version__})"]
    jax = pins["jax"]
    for kind, extra in (("cpu", None), ("gpu", f"jax[cuda12]=={jax}"),
                        ("tpu", f"jax[tpu]=={jax}")):
        commands = colab_setup.install_commands(ROOT, kind)
        assert f"jax=={jax}" in commands[0] and "scikit-video==1.1.11" in commands[0]
        assert commands[-1][-3:] == ["--no-deps", "-e", ROOT]
        assert [c[-1] for c in commands[1:-1]] == ([extra] if extra else [])
    monkeypatch.delenv("COLAB_RELEASE_TAG", raising=False)
    assert not colab_setup.on_colab()
