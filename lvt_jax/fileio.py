"""Durable atomic writes: a file appears under its final name only once complete.

Every file the project writes and renames goes through `commit`: the temporary file is
flushed to disk (fsync) before the rename and the directory after it. Without the first
fsync a power cut can leave a complete-looking but truncated file under the final name
(the rename reaches the disk before the data); without the second the rename itself may
be lost.
"""
from __future__ import annotations

import json
import os
from typing import Any


def fsync_path(path: str) -> None:
    """Flushes a file's (or a directory's) data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: str, path: str) -> None:
    """Renames the finished file `tmp` to `path`, durably (fsync before and after)."""
    fsync_path(tmp)
    os.replace(tmp, path)
    try:
        fsync_path(os.path.dirname(os.path.abspath(path)))
    except OSError:  # some filesystems cannot fsync a directory; the data is safe anyway
        pass


def write_json(path: str, obj: Any, indent: int = 2) -> None:
    """JSON written atomically and durably (readers never see a partial file); the
    temporary name carries the pid, so processes writing the same file do not collide."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=True)
    commit(tmp, path)
