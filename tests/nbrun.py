"""Runs a notebook of notebooks/ headless in a kernel of this Python, with parameters.

Parameters are injected papermill-style: a cell assigning them goes right after the cell
tagged `parameters`. The kernel runs this interpreter (the venv's), with the checkout first
on its path, in notebooks/ as its working directory (as Jupyter opens it).
"""
from __future__ import annotations

import json
import os
import sys

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(ROOT, "notebooks")
KERNEL = "lvt-jax-tests"

__all__ = ["CellExecutionError", "execute", "outputs_text", "kernel_dir"]


def kernel_dir(folder: str) -> str:
    """Writes a kernelspec running this interpreter into `folder`/KERNEL; returns `folder`."""
    d = os.path.join(folder, KERNEL)
    os.makedirs(d, exist_ok=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "lvt_jax tests", "language": "python",
            "env": {"PYTHONPATH": os.pathsep.join(
                [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}}
    with open(os.path.join(d, "kernel.json"), "w") as f:
        json.dump(spec, f)
    return folder


def with_parameters(nb, params: dict):
    """The notebook with a cell assigning `params` after its `parameters` cell."""
    idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    cell.pop("id", None)
    nb.cells.insert(idx + 1, cell)
    return nb


def execute(name: str, params: dict, kernels: str, timeout: int = 300):
    """Executes notebooks/`name` with `params`; returns the executed notebook (the
    CellExecutionError of a failing cell propagates, with the notebook as `.notebook`)."""
    nb = with_parameters(nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4), params)
    ksm = KernelSpecManager(kernel_dirs=[kernels], ensure_native_kernel=False)
    km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=ksm)
    client = NotebookClient(nb, km=km, timeout=timeout, kernel_name=KERNEL,
                            resources={"metadata": {"path": NOTEBOOKS}})
    try:
        client.execute()
    except CellExecutionError as e:
        e.notebook = nb
        raise
    return nb


def outputs_text(nb) -> str:
    """Everything the cells printed or displayed, as text (stdout, HTML, markdown, errors)."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(out.text)
            elif out.output_type in ("display_data", "execute_result"):
                for mime in ("text/html", "text/markdown", "text/plain"):
                    if mime in out.data:
                        parts.append(out.data[mime])
            elif out.output_type == "error":
                parts.extend(out.traceback)
    return "\n".join(parts)
