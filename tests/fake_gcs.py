"""gs:// kept in memory, for tests that run offline: registered with fsspec under the
names gcsfs uses, so lvt_jax.fileio and etils' epath (hence tfds and orbax's path code)
reach it exactly as they would reach gcsfs. Array data that array_record or TensorStore
read with their own GCS clients cannot be faked this way."""
from __future__ import annotations

import contextlib

import fsspec
from fsspec.implementations.memory import MemoryFileSystem
from fsspec.registry import _registry


class FakeGCS(MemoryFileSystem):
    protocol = ("gs", "gcs")
    store: dict = {}
    pseudo_dirs = [""]

    def __init__(self, *args, **kwargs):  # gcsfs options (finalize_on_close, ...)
        super().__init__()

    @classmethod
    def _strip_protocol(cls, path):
        for prefix in ("gs://", "gcs://"):
            if path.startswith(prefix):
                path = path[len(prefix):]
        return super()._strip_protocol(path)


class DeniedGCS(FakeGCS):
    """A bucket this machine has no credentials for: every call is refused."""

    def info(self, path, **kwargs):
        raise PermissionError("401 Anonymous caller does not have storage.objects.get access")

    def put_file(self, lpath, rpath, **kwargs):
        raise PermissionError("401 Anonymous caller does not have storage.objects.create access")


@contextlib.contextmanager
def registered(cls=FakeGCS):
    """fsspec (and epath's cached filesystems) use `cls` for gs:// inside the block."""
    from etils.epath import backend

    saved = {k: _registry.get(k) for k in cls.protocol}
    cls.store.clear()
    cls.pseudo_dirs[:] = [""]
    for name in cls.protocol:
        fsspec.register_implementation(name, cls, clobber=True)
    backend.fsspec_backend._get_filesystem.cache_clear()
    try:
        yield cls
    finally:
        for name, old in saved.items():
            if old is None:
                _registry.pop(name, None)
            else:
                _registry[name] = old
        cls.clear_instance_cache()
        backend.fsspec_backend._get_filesystem.cache_clear()
        cls.store.clear()
