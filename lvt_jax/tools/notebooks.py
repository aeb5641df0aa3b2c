"""Keeps notebooks/ consistent: outputs stripped, Colab links from one address.

  python -m lvt_jax.tools.notebooks            # strip outputs, rewrite links (in place)
  python -m lvt_jax.tools.notebooks --check    # list problems, exit 1 if any (CI's check)

The repository's address lives in one place, `[project.urls] Repository` of
pyproject.toml. From it this tool writes the README's "Open in Colab" badges (between
the `notebooks:begin` / `notebooks:end` markers) and the `REPOSITORY = "..."` line of every
notebook's setup cell (what a fresh Colab runtime clones). Notebooks are committed without
outputs, execution counts or widget state: diffs stay readable and nothing a run printed
(paths, numbers of one machine) goes into git.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BRANCH = "main"
BEGIN, END = "<!-- notebooks:begin -->", "<!-- notebooks:end -->"
REPO_LINE = re.compile(r'^REPOSITORY = "[^"]*"', re.M)
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"


def repository(root: str = ROOT) -> str:
    """`Repository` of pyproject.toml's [project.urls], e.g. https://github.com/OWNER/lvt_jax."""
    with open(os.path.join(root, "pyproject.toml")) as f:
        text = f.read()
    m = re.search(r'^\[project\.urls\][^\[]*?^Repository\s*=\s*"([^"]+)"', text, re.M | re.S)
    if m is None:
        raise ValueError("pyproject.toml has no `Repository = \"https://github.com/OWNER/"
                         "NAME\"` under [project.urls]: add it (the notebooks' links are "
                         "built from it).")
    url = m.group(1).rstrip("/")
    if not re.fullmatch(r"https://github\.com/[^/]+/[^/]+", url):
        raise ValueError(f"[project.urls] Repository = {url!r}: Colab opens notebooks from "
                         "GitHub, give https://github.com/OWNER/NAME.")
    return url


def notebook_paths(root: str = ROOT) -> list[str]:
    """notebooks/*.ipynb, the quickstart first."""
    d = os.path.join(root, "notebooks")
    names = sorted((n != "quickstart.ipynb", n) for n in os.listdir(d) if n.endswith(".ipynb"))
    return [os.path.join("notebooks", n) for _, n in names]


def colab_url(repo: str, path: str) -> str:
    return (f"https://colab.research.google.com/github/{repo.split('github.com/')[1]}/blob/"
            f"{BRANCH}/{path}")


def title(nb: dict) -> str:
    """The first markdown heading of a notebook (its one-line description)."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("# ").strip()
    return ""


def badges(repo: str, root: str = ROOT) -> str:
    """The README block: one line per notebook, its badge, file and title."""
    lines = [BEGIN]
    for path in notebook_paths(root):
        with open(os.path.join(root, path)) as f:
            nb = json.load(f)
        lines.append(f"- [![Open In Colab]({BADGE})]({colab_url(repo, path)}) "
                     f"[`{path}`]({path}): {title(nb)}")
    return "\n".join(lines + [END])


def stripped(nb: dict) -> dict:
    """The notebook without outputs, execution counts and run-time metadata."""
    nb = json.loads(json.dumps(nb))
    nb["metadata"].pop("widgets", None)
    for cell in nb["cells"]:
        for k in ("execution", "collapsed", "scrolled"):
            cell.get("metadata", {}).pop(k, None)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
    return nb


def with_repository(nb: dict, repo: str) -> dict:
    """Sets the setup cell's REPOSITORY line to `repo`."""
    nb = json.loads(json.dumps(nb))
    for cell in nb["cells"]:
        src = "".join(cell["source"])
        if cell["cell_type"] == "code" and REPO_LINE.search(src):
            new = REPO_LINE.sub(f'REPOSITORY = "{repo}"', src)
            cell["source"] = new.splitlines(keepends=True)
    return nb


def dumps(nb: dict) -> str:
    """As Jupyter writes notebooks (nbformat: indent 1, sorted keys)."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _readme_block(readme: str) -> str | None:
    m = re.search(re.escape(BEGIN) + r".*?" + re.escape(END), readme, re.S)
    return None if m is None else m.group(0)


def problems(root: str = ROOT) -> list[str]:
    """Everything out of date: unstripped notebooks, links that differ from the address."""
    repo = repository(root)
    out = []
    for path in notebook_paths(root):
        with open(os.path.join(root, path)) as f:
            text = f.read()
        nb = json.loads(text)
        if stripped(nb) != nb:
            out.append(f"{path}: holds outputs or run-time metadata (strip them: python -m "
                       "lvt_jax.tools.notebooks)")
        if not any(REPO_LINE.search("".join(c["source"])) for c in nb["cells"]):
            out.append(f"{path}: no setup cell with a REPOSITORY line")
        elif with_repository(nb, repo) != nb:
            out.append(f"{path}: its REPOSITORY line is not {repo}")
    with open(os.path.join(root, "README.md")) as f:
        block = _readme_block(f.read())
    if block is None:
        out.append(f"README.md: no {BEGIN} ... {END} block")
    elif block != badges(repo, root):
        out.append("README.md: the notebook links are not those of the notebooks and the "
                   f"address {repo}")
    return out


def write(root: str = ROOT) -> None:
    """Strips every notebook, sets its REPOSITORY line and rewrites the README block."""
    repo = repository(root)
    for path in notebook_paths(root):
        full = os.path.join(root, path)
        with open(full) as f:
            nb = json.load(f)
        text = dumps(with_repository(stripped(nb), repo))
        with open(full, "w") as f:
            f.write(text)
    readme = os.path.join(root, "README.md")
    with open(readme) as f:
        text = f.read()
    if _readme_block(text) is None:
        raise ValueError(f"README.md: put the lines {BEGIN} and {END} where the notebook "
                         "links go.")
    with open(readme, "w") as f:
        f.write(text.replace(_readme_block(text), badges(repo, root)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report, change nothing")
    parser.add_argument("--root", default=ROOT, help="the repository (default: this clone)")
    args = parser.parse_args(argv)
    if not args.check:
        write(args.root)
    found = problems(args.root)
    for p in found:
        print(p)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
