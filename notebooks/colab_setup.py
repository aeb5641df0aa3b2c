"""The notebooks' first step: the package and its pinned dependencies for this runtime.

Standard library only: it runs before anything is installed. On Colab it installs the
pinned versions of requirements.txt, with the jax build of the runtime's accelerator
(GPU: the CUDA build, TPU: the TPU build, same jax version), the example clip's package
and the package itself from the clone. Elsewhere (a local Jupyter, CI) it installs
nothing: it says which pins the environment misses, if any.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys

# requirements.txt: the lines after this marker pin the test suite's notebook runner
# (ipykernel, jupyter_client, tornado, ...); a Colab runtime keeps its own.
TEST_ONLY_MARKER = "# --- test suite only"


def accelerator() -> str:
    """'tpu', 'gpu' or 'cpu': what this runtime has (asks no jax: none is installed yet)."""
    if shutil.which("nvidia-smi") and subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True).returncode == 0:
        return "gpu"
    if (os.environ.get("COLAB_TPU_ADDR") or os.environ.get("TPU_NAME")
            or os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")):
        return "tpu"
    return "cpu"


def pins(root: str) -> dict[str, str]:
    """requirements.txt down to the test-only block, as {distribution: version}."""
    out = {}
    with open(os.path.join(root, "requirements.txt")) as f:
        for line in f:
            if line.startswith(TEST_ONLY_MARKER):
                break
            m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)==([^\s;#]+)\s*(#.*)?", line.rstrip("\n"))
            if m:
                out[m.group(1)] = m.group(2)
    return out


def missing(wanted: dict[str, str]) -> list[str]:
    """The pins this environment does not have, as 'name==version (have X)'."""
    out = []
    for name, version in wanted.items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        if have != version:
            out.append(f"{name}=={version} (have {have or 'none'})")
    return out


def install_commands(root: str, kind: str) -> list[list[str]]:
    """The pip commands that set up a fresh runtime with accelerator `kind`."""
    versions = pins(root)
    jax = versions["jax"]
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    commands = [pip + [f"{n}=={v}" for n, v in versions.items()]]
    if kind == "gpu":
        commands.append(pip + [f"jax[cuda12]=={jax}"])
    elif kind == "tpu":
        commands.append(pip + [f"jax[tpu]=={jax}"])
    commands.append(pip + ["--no-deps", "-e", root])
    return commands


def on_colab() -> bool:
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def setup(root: str) -> None:
    """Installs what the notebooks need on Colab; elsewhere only reports missing pins."""
    lacking = missing(pins(root))
    if not lacking:
        print(f"lvt_jax: environment ready ({root}).")
        return
    if not on_colab():
        print(f"lvt_jax: this environment differs from requirements.txt in {len(lacking)} "
              f"package(s) ({', '.join(lacking[:4])}{', ...' if len(lacking) > 4 else ''}); "
              f"if a cell fails, run: pip install -r {root}/requirements.txt -e {root}")
        return
    kind = accelerator()
    print(f"lvt_jax: installing the pinned packages for a {kind.upper()} runtime "
          "(a few minutes, once per runtime)...")
    for command in install_commands(root, kind):
        subprocess.run(command, check=True)
    stale = [m for m in ("numpy", "jax", "jaxlib", "PIL") if m in sys.modules]
    if stale:
        print(f"lvt_jax: {', '.join(stale)} were imported before the install: restart the "
              "session (Runtime > Restart session) and run the notebook again.")
    else:
        print("lvt_jax: installed.")
