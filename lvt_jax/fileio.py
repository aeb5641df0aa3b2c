"""Every path the project reads or writes, local or in an object store, through one layer.

A user path may be a local path or a URL of a filesystem fsspec knows: `gs://` (Google
Cloud Storage, package gcsfs), `s3://` (s3fs), `memory://` (tests). On a TPU pod slice
or several GPU nodes the workdir must be seen by every host, in practice a bucket;
`os.makedirs("gs://b/run")` would make a local folder named `gs:` instead. So the code
never calls `open` / `os.path` / `os.makedirs` on a user path: it calls these functions.

Writes are atomic: a file appears under its final name only once complete.
* Local: a temporary file in the same folder, flushed to disk (fsync) before the rename
  and the folder after it. Without the first fsync a power cut can leave a
  complete-looking but truncated file under the final name (the rename reaches the disk
  before the data); without the second the rename itself may be lost.
* Object stores: the file is written to a local temporary file and uploaded whole; an
  object store creates an object only when its upload completes (its equivalent of the
  rename), so readers never see half a file, and a failed write leaves nothing.
Folders are prefixes in an object store: `makedirs` does nothing there and a folder
"exists" once a file is under it.
"""
from __future__ import annotations

import builtins
import contextlib
import json
import os
import posixpath
import shutil
import tempfile
from typing import IO, Any, Iterator

# protocol -> (the package fsspec needs for it, what to install)
_PACKAGES = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "az": "adlfs",
             "abfs": "adlfs"}
OBJECT_STORES = frozenset(_PACKAGES)  # no real folders: a folder is a name prefix
GCS_HELP = ("on a Cloud TPU VM or a Compute Engine / GKE machine give its service account "
            "access to the bucket (e.g. `gcloud storage buckets add-iam-policy-binding "
            "gs://BUCKET --member=serviceAccount:ACCOUNT --role=roles/storage.objectAdmin`); "
            "elsewhere run `gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS=/path/to/key.json")


class PathAccessError(OSError):
    """A path cannot be used: a missing package, credentials or permission; the message
    says what to install or configure."""


# --------------------------------------------------------------------------- names


def protocol(path: str) -> str | None:
    """'gs' for 'gs://bucket/x', None for a local path (also 'file://...')."""
    path = os.fspath(path)
    if "://" not in path:
        return None
    proto = path.split("://", 1)[0].lower()
    return None if proto in ("file", "local") else proto


def is_remote(path: str) -> bool:
    return protocol(path) is not None


def _local(path: str) -> str:
    path = os.fspath(path)
    return path.split("://", 1)[1] if path.startswith(("file://", "local://")) else path


def absolute(path: str) -> str:
    """A local path made absolute (~ expanded); a URL as it is (no trailing slash)."""
    path = os.fspath(path)
    if is_remote(path):
        head, rest = path.split("://", 1)
        return f"{head}://{rest.rstrip('/')}" if rest.strip("/") else path
    return os.path.abspath(os.path.expanduser(_local(path)))


def join(path: str, *parts: str) -> str:
    path = os.fspath(path)
    return posixpath.join(path, *parts) if is_remote(path) else os.path.join(path, *parts)


def dirname(path: str) -> str:
    path = os.fspath(path)
    return posixpath.dirname(path.rstrip("/")) if is_remote(path) else os.path.dirname(path)


def basename(path: str) -> str:
    path = os.fspath(path)
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


# ---------------------------------------------------------------------- filesystems


def filesystem(path: str):
    """(fsspec filesystem, its own path) of a URL; PathAccessError naming the package to
    install when the protocol's package is missing."""
    import fsspec
    try:
        return fsspec.core.url_to_fs(os.fspath(path))
    except ImportError as e:
        raise PathAccessError(missing_package_message(path)) from e
    except ValueError as e:  # an unknown protocol
        raise PathAccessError(f"{path}: {e}. Use a local path or gs:// (or another "
                              "filesystem fsspec supports).") from e


def missing_package_message(path: str) -> str:
    proto = protocol(path) or "?"
    package = _PACKAGES.get(proto)
    if package == "gcsfs":
        return (f"{path} is in Google Cloud Storage, which needs the gcsfs package: "
                "pip install -e '.[gcs]' (or pip install gcsfs, the version in "
                "pyproject.toml's gcs extra). Then give this machine credentials: "
                f"{GCS_HELP}.")
    if package:
        return f"{path} needs the {package} package: pip install {package}."
    return f"{path}: fsspec has no filesystem for {proto}://; install the package providing it."


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(_local(path))
    fs, p = filesystem(path)
    return fs.exists(p)


def isdir(path: str) -> bool:
    if not is_remote(path):
        return os.path.isdir(_local(path))
    fs, p = filesystem(path)
    return fs.isdir(p)


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(_local(path))
    fs, p = filesystem(path)
    return fs.isfile(p)


def listdir(path: str) -> list[str]:
    """Names in a folder (FileNotFoundError if there is none), unsorted like os.listdir."""
    if not is_remote(path):
        return os.listdir(_local(path))
    fs, p = filesystem(path)
    if not fs.isdir(p):
        raise FileNotFoundError(f"no folder {path}")
    own = p.rstrip("/")  # some stores list the folder itself among its entries
    entries = [e.rstrip("/") for e in fs.ls(p, detail=False)]
    return [posixpath.basename(e) for e in entries if e and e != own]


def getsize(path: str) -> int:
    if not is_remote(path):
        return os.path.getsize(_local(path))
    fs, p = filesystem(path)
    return int(fs.size(p))


def makedirs(path: str) -> None:
    """Creates a folder and its parents (existing ones are fine); nothing in an object
    store, where folders are name prefixes."""
    if not is_remote(path):
        os.makedirs(_local(path), exist_ok=True)
    elif protocol(path) not in OBJECT_STORES:
        fs, p = filesystem(path)
        fs.makedirs(p, exist_ok=True)


def remove(path: str) -> None:
    if not is_remote(path):
        os.remove(_local(path))
        return
    fs, p = filesystem(path)
    fs.rm_file(p)


def rmtree(path: str) -> None:
    """Deletes a folder and everything in it (a missing one is fine)."""
    if not is_remote(path):
        shutil.rmtree(_local(path), ignore_errors=True)
        return
    fs, p = filesystem(path)
    if fs.exists(p):
        fs.rm(p, recursive=True)


def rename(src: str, dst: str) -> None:
    """Moves a file or folder. Atomic locally; in an object store a folder is moved file
    by file (copy, then delete)."""
    if not is_remote(src) and not is_remote(dst):
        os.replace(_local(src), _local(dst))
        return
    if protocol(src) != protocol(dst):
        raise ValueError(f"cannot move {src} to {dst}: another filesystem.")
    fs, p = filesystem(src)
    _, q = filesystem(dst)
    fs.mv(p, q, recursive=fs.isdir(p))


def remove_empty_dirs(root: str) -> None:
    """Removes `root` and the folders below it that hold no file (deepest first); object
    stores have no empty folders."""
    if is_remote(root):
        return
    for d, _, _ in sorted(os.walk(_local(root)), key=lambda w: -len(w[0])):
        try:
            os.rmdir(d)  # fails (and is skipped) unless empty
        except OSError:
            pass


# --------------------------------------------------------------------------- reading


def open(path: str, mode: str = "rb") -> IO:  # noqa: A001 - the layer's `open`
    """Opens a file for reading (writes go through `atomic_write` / `staged_write`)."""
    if any(c in mode for c in "wax+"):
        raise ValueError(f"fileio.open is for reading; write {path} with atomic_write.")
    if not is_remote(path):
        return builtins.open(_local(path), mode)
    fs, p = filesystem(path)
    return fs.open(p, mode)


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    with open(path, "r") as f:
        return f.read()


def read_json(path: str) -> Any:
    """The JSON in `path`, or None when there is no such file."""
    try:
        with open(path, "r") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local name holding `path`'s contents (a file, or a folder with everything below
    it), for libraries that read local files only (video decoders, torch); downloaded for
    a URL, deleted after the block."""
    if not is_remote(path):
        yield _local(path)
        return
    fs, p = filesystem(path)
    p = p.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="lvt_jax-") as tmp:
        local = os.path.join(tmp, basename(path) or "file")
        if fs.isdir(p):
            for f in fs.find(p):
                rel = f.rstrip("/")[len(p):].lstrip("/")
                os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
                fs.get_file(f, os.path.join(local, rel))
            os.makedirs(local, exist_ok=True)
        else:
            fs.get_file(p, local)
        yield local


# --------------------------------------------------------------------------- writing


def fsync_path(path: str) -> None:
    """Flushes a local file's (or a directory's) data and metadata to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: str, path: str) -> None:
    """Renames the finished local file `tmp` to `path`, durably (fsync before and after)."""
    fsync_path(tmp)
    os.replace(tmp, path)
    try:
        fsync_path(os.path.dirname(os.path.abspath(path)))
    except OSError:  # some filesystems cannot fsync a directory; the data is safe anyway
        pass


def temp_name(path: str, keep_ext: bool = False) -> str:
    """The temporary name of a local file being written: `path.tmp-PID` (keep_ext:
    `base.tmp-PID.ext`, for writers that choose the format by the name). The pid lets
    processes write the same file without colliding."""
    if keep_ext:
        base, ext = os.path.splitext(path)
        return f"{base}.tmp-{os.getpid()}{ext}"
    return f"{path}.tmp-{os.getpid()}"


@contextlib.contextmanager
def staged_write(path: str, keep_ext: bool = False) -> Iterator[str]:
    """Yields a local file name to write; when the block ends without an error the file
    becomes `path` atomically (local: fsync + rename; object store: one upload). On an
    error nothing appears under `path` and the temporary file is removed. For writers
    that need a file name (array_record, PyAV, numpy, PIL)."""
    if not is_remote(path):
        tmp = temp_name(_local(path), keep_ext)
        try:
            yield tmp
            commit(tmp, _local(path))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    fs, p = filesystem(path)
    ext = os.path.splitext(p)[1] if keep_ext else ""
    with tempfile.TemporaryDirectory(prefix="lvt_jax-") as tmp_dir:
        tmp = os.path.join(tmp_dir, f"upload{ext}")
        yield tmp
        if protocol(path) not in OBJECT_STORES:
            fs.makedirs(posixpath.dirname(p), exist_ok=True)
        fs.put_file(tmp, p)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb") -> Iterator[IO]:
    """An open file whose contents appear under `path` only once the block completes."""
    with staged_write(path) as tmp:
        with builtins.open(tmp, mode) as f:
            yield f


def write_bytes(path: str, data: bytes) -> None:
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    with atomic_write(path, "w") as f:
        f.write(text)


def write_json(path: str, obj: Any, indent: int = 2) -> None:
    """JSON written atomically and durably (readers never see a partial file); processes
    writing the same file do not collide."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=indent, sort_keys=True)


def upload_tree(local_dir: str, dest: str, last: tuple[str, ...] = ()) -> list[str]:
    """Copies every file below the local folder `local_dir` to `dest` (any filesystem),
    each file atomically; files named in `last` go after all others (the files whose
    presence marks the copy complete). Returns the relative paths copied."""
    files = []
    for d, _, names in os.walk(local_dir):
        for n in names:
            files.append(os.path.relpath(os.path.join(d, n), local_dir))
    files.sort(key=lambda rel: (os.path.basename(rel) in last, rel))
    for rel in files:
        target = join(dest, *rel.split(os.sep))
        makedirs(dirname(target))
        with staged_write(target) as tmp:
            shutil.copyfile(os.path.join(local_dir, rel), tmp)
    return files
