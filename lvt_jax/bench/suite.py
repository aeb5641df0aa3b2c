"""`python -m lvt_jax.bench suite`: every registered benchmark's suite entries, one JSON.

Each entry runs in a process of its own (`python -m lvt_jax.bench NAME --json` on the
suite's config plus the entry's variants), so its peak RSS is its own, a failure or an
out-of-memory stops only that entry, and an accelerator is held by one process at a time.
This process never initialises a JAX backend. Command-line flags given to the suite
(`--steps`, `--batch`, `--config.a.b=value`, ...) are passed on to every entry.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from ml_collections import config_flags

from lvt_jax.bench import registry

# Flags of the bench CLI that the suite itself consumes (not passed on to entries).
_SUITE_ONLY = ("config", "json", "only", "skip", "entry_timeout")


def entry_config(config_arg: str, variants: str) -> str:
    """'configs/x.py:a' + 'b,c' -> 'configs/x.py:a,b,c' (no variant twice)."""
    path, _, arg = config_arg.partition(":")
    names = [v for v in arg.split(",") if v]
    names += [v for v in variants.split(",") if v and v not in names]
    return f"{path}:{','.join(names)}" if names else path


def load_config(config_arg: str):
    """get_config(arg) of the config file, or raises ValueError (e.g. an unknown variant)."""
    import importlib.util
    path, _, arg = config_arg.partition(":")
    spec = importlib.util.spec_from_file_location("lvt_suite_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg or None)


def _passed_on(flags_obj: Any, names: tuple[str, ...], argv: list[str]) -> list[str]:
    """The flags to give every entry: config overrides verbatim, and the bench flags
    (`names`) that were set on the command line."""
    out = [a for a in argv if a.startswith("--config.")]
    for name in names:
        f = flags_obj[name]
        if name in _SUITE_ONLY or not f.present:
            continue
        v = f.value
        out.append(f"--{name}=" + (",".join(map(str, v)) if isinstance(v, list) else str(v)))
    return out


def run_entry(bench: str, config_arg: str, passed_on: list[str], timeout: int) -> dict:
    cmd = [sys.executable, "-m", "lvt_jax.bench", bench, f"--config={config_arg}", "--json",
           *passed_on]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout or None)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s", "command": " ".join(cmd)}
    wall = time.perf_counter() - t
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit status {proc.returncode}", "command": " ".join(cmd),
                "stderr_tail": proc.stderr[-3000:]}
    result = json.loads(lines[-1])
    result["entry_wall_s"] = wall
    return result


def run_suite(flags_obj: Any, bench_flags: tuple[str, ...]) -> dict:
    config_arg = config_flags.get_config_filename(flags_obj["config"])
    only = set(flags_obj.only or [])
    skip = set(flags_obj.skip or [])
    entries = registry.suite_entries()
    known = {e for e, _, _ in entries}
    unknown = (only | skip) - known
    if unknown:
        raise ValueError(f"suite: unknown entries {sorted(unknown)}; known: {sorted(known)}")
    passed_on = _passed_on(flags_obj, bench_flags, sys.argv)
    out: dict[str, Any] = {"benchmark": "suite", "config": config_arg, "passed_on": passed_on,
                           "entries": {}, "skipped": {}, "failed": []}
    todo = [(e, b, v) for e, b, v in entries if (not only or e in only) and e not in skip]
    for i, (entry, bench, variants) in enumerate(todo):
        cfg = entry_config(config_arg, variants)
        try:
            load_config(cfg)
        except ValueError as err:  # e.g. a config without that variant
            out["skipped"][entry] = str(err)
            print(f"suite [{i + 1}/{len(todo)}] {entry}: skipped ({err})", file=sys.stderr,
                  flush=True)
            continue
        print(f"suite [{i + 1}/{len(todo)}] {entry}: {bench} --config={cfg}", file=sys.stderr,
              flush=True)
        result = run_entry(bench, cfg, passed_on, int(flags_obj.entry_timeout))
        result["config"] = cfg
        out["entries"][entry] = result
        if "error" in result:
            out["failed"].append(entry)
            print(f"  failed: {result['error']}\n{result.get('stderr_tail', '')[-800:]}",
                  file=sys.stderr, flush=True)
        else:
            out.setdefault("device", result.get("device"))
            print(f"  done in {result['entry_wall_s']:.0f} s", file=sys.stderr, flush=True)
    out["load_average"] = list(os.getloadavg())
    return out
