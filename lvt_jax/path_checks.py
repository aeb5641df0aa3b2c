"""Start-up checks of the paths a run uses, before any data is read or anything compiled.

* A path in a bucket (gs://...) needs its filesystem package and credentials. Every such
  path the config names is touched now (read; the workdir also written, by every process:
  each writes its own checkpoint shards there), and a failure says what to install or
  configure, instead of failing deep inside orbax or tfds after minutes of compiling.
* Multi-host: all processes must share the workdir (checkpoints are written by all of
  them, results by process 0). Process 0 writes a marker holding a random token into it,
  every other process must read it back; a host that does not (each host has its own
  local folder at that path) stops the run on every process, with an explanation.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Any, Iterator

import jax
import numpy as np

from lvt_jax import fileio

log = logging.getLogger(__name__)

PATH_FIELDS = ("data_dir", "codes_dir", "init_from", "prime")  # config fields naming paths
SOURCE_FIELDS = ("bair_source_dir", "source_dir")  # raw videos to prepare: local only
MARKER_PREFIX = ".lvt_jax-shared-check-"
SHARED_HELP = ("every process must read and write the same workdir: use a bucket "
               "(--workdir=gs://BUCKET/RUN, with pip install -e '.[gcs]') or a filesystem "
               "mounted at the same path on every host (NFS, Filestore, Lustre)")


def config_paths(config: Any, fields: tuple[str, ...] = PATH_FIELDS
                 ) -> Iterator[tuple[str, str]]:
    """(field, path) of every path the config names (init_from may list several)."""
    def walk(node: Any, prefix: str) -> Iterator[tuple[str, str]]:
        items = node.items() if hasattr(node, "items") else ()
        for key, value in items:
            name = f"{prefix}{key}"
            if hasattr(value, "items"):
                yield from walk(value, name + ".")
            elif key in fields and isinstance(value, str) and value:
                for part in value.split(","):
                    if part.strip():
                        yield name, part.strip()
    yield from walk(config, "")


def access_problem(what: str, path: str, write: bool) -> str | None:
    """Why `path` (a URL) cannot be read (or written), naming the fix; None if it can.
    A missing path is fine to read (the checks that need it say so); a missing data_dir
    must be writable (the dataset is prepared into it)."""
    try:
        fs, p = fileio.filesystem(path)
    except fileio.PathAccessError as e:
        return f"{what}={path}: {e}"
    action = "read"
    try:
        try:
            fs.info(p)
            present = True
        except FileNotFoundError:
            present = False
        if write or (not present and what.endswith("data_dir")):
            action = "write to"
            probe = fileio.join(fileio.absolute(path),
                                f".lvt_jax-probe-{socket.gethostname()}-{os.getpid()}")
            fileio.write_bytes(probe, b"")
            fileio.remove(probe)
    except Exception as e:  # noqa: BLE001 - the client's errors differ per store
        hint = (f"Check the bucket name and the credentials: {fileio.GCS_HELP}."
                if fileio.protocol(path) in ("gs", "gcs") else
                "Check the path and this machine's credentials for it.")
        first = (str(e).strip().splitlines() or [""])[0][:300]
        return f"{what}={path}: cannot {action} it ({type(e).__name__}: {first}). {hint}"
    return None


def check(config: Any, workdir: str | None) -> None:
    """All start-up checks of the paths of a run (cheap for local paths: only the
    multi-host marker touches the disk)."""
    problems = [access_problem("--workdir", workdir, write=True)
                if workdir and fileio.is_remote(workdir) else None]
    problems += [access_problem(what, path, write=False)
                 for what, path in config_paths(config) if fileio.is_remote(path)]
    problems += [f"{what}={path}: source videos are read from a local folder; copy them to "
                 "this machine (e.g. gcloud storage cp -r) or mount the bucket (gcsfuse). "
                 "The prepared dataset may live in a bucket: data.data_dir=gs://..."
                 for what, path in config_paths(config, SOURCE_FIELDS) if fileio.is_remote(path)]
    problems = [p for p in problems if p]
    if jax.process_count() == 1:
        if problems:
            raise fileio.PathAccessError("\n".join(problems))
        return
    for p in problems:
        log.error("process %d: %s", jax.process_index(), p)
    _check_shared(workdir, problems)


def _check_shared(workdir: str | None, problems: list[str]) -> None:
    """Every process learns every process's outcome (a collective), so all stop together."""
    from jax.experimental import multihost_utils
    pid = jax.process_index()
    token = np.zeros(2, np.uint32)
    marker, created = None, False
    if workdir and pid == 0 and not problems:
        token = np.frombuffer(os.urandom(8), np.uint32).copy()
        created = not fileio.exists(workdir)
        fileio.makedirs(workdir)
        marker = _marker(workdir, token)
        fileio.write_text(marker, _text(token))
    token = np.asarray(multihost_utils.broadcast_one_to_all(token), np.uint32)
    seen = True
    if workdir and token.any():
        try:
            seen = fileio.read_text(_marker(workdir, token)) == _text(token)
        except Exception:  # noqa: BLE001 - missing or unreadable: not shared
            seen = False
    flags = np.asarray(multihost_utils.process_allgather(
        np.asarray([not problems, seen], np.int32))).reshape(-1, 2)
    if marker is not None:
        fileio.remove(marker)
        if created:
            fileio.remove_empty_dirs(workdir)
    failed = [int(i) for i in np.flatnonzero(flags[:, 0] == 0)]
    unseen = [int(i) for i in np.flatnonzero(flags[:, 1] == 0)]
    if failed:
        raise fileio.PathAccessError(
            f"process(es) {failed} cannot use the run's paths: "
            + ("; ".join(problems) if problems else "see their logs for the reason")
            + ". Every process must be able to read and write them.")
    if unseen:
        raise RuntimeError(
            f"--workdir={workdir} is not shared between the hosts: process 0 wrote "
            f"{_marker(workdir, token)} but process(es) {unseen} do not see it (each host "
            f"has its own folder at that path); {SHARED_HELP}.")


def _text(token: np.ndarray) -> str:
    return "".join(f"{int(w):08x}" for w in token)


def _marker(workdir: str, token: np.ndarray) -> str:
    return fileio.join(workdir, MARKER_PREFIX + _text(token))
