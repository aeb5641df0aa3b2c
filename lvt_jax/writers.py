"""TensorBoard scalars/images (tensorboardX: no TensorFlow needed) and a progress bar.

A logdir in an object store (gs://...) is written through lvt_jax.fileio like every other
path: an object cannot be appended to, so an event file is uploaded whole at each flush
(every 60 s) and, past `ROLL_BYTES`, continued in a new file (TensorBoard reads every
`*tfevents*` file of the folder in name order).
"""
from __future__ import annotations

import io

import numpy as np

from lvt_jax import fileio

ROLL_BYTES = 8 << 20
REMOTE_FLUSH_SECS = 60


class _RemoteEventFile:
    """tensorboardX's record-writer interface (write, flush, close) over an object store."""

    def __init__(self, path: str, roll_bytes: int = ROLL_BYTES):
        self.path, self.roll_bytes = path, int(roll_bytes)
        self._part, self._buf, self._dirty = 0, io.BytesIO(), False

    def _name(self) -> str:
        return self.path if self._part == 0 else f"{self.path}.part{self._part:04d}"

    def write(self, data: bytes) -> None:
        self._buf.write(data)
        self._dirty = True

    def flush(self) -> None:
        if self._dirty:
            fileio.write_bytes(self._name(), self._buf.getvalue())
            self._dirty = False
        if self._buf.tell() >= self.roll_bytes:
            self._part, self._buf = self._part + 1, io.BytesIO()

    def close(self) -> None:
        self.flush()


class _RemoteEventFiles:
    """The factory tensorboardX asks for a protocol's event files."""

    def open(self, path: str) -> _RemoteEventFile:
        return _RemoteEventFile(path)

    def directory_check(self, path: str) -> None:
        fileio.makedirs(path)


def _register_remote(logdir: str) -> None:
    from tensorboardX import record_writer
    record_writer.register_writer_factory(fileio.protocol(logdir), _RemoteEventFiles())


class MetricWriter:
    """Opens its event file on the first write, so a run that fails before logging
    anything leaves no folder behind."""

    def __init__(self, logdir: str, enabled: bool = True):
        self.enabled = enabled
        self._logdir = logdir
        self._w = None

    def _writer(self):
        if self._w is None and self.enabled:
            from tensorboardX import SummaryWriter
            remote = fileio.is_remote(self._logdir)
            if remote:
                _register_remote(self._logdir)
            self._w = SummaryWriter(logdir=self._logdir,
                                    flush_secs=REMOTE_FLUSH_SECS if remote else 10)
        return self._w

    def scalars(self, step: int, values: dict) -> None:
        if self._writer():
            for k, v in values.items():
                self._w.add_scalar(k, float(v), int(step))

    def image(self, step: int, name: str, img: np.ndarray) -> None:
        if self._writer():
            self._w.add_image(name, np.asarray(img), int(step), dataformats="HWC")

    def close(self) -> None:
        self.enabled = False  # a write after close does not reopen
        if self._w:
            self._w.close()
            self._w = None


class ProgressBar:
    """tqdm bar showing loss and throughput; silent on non-primary processes."""

    def __init__(self, total: int, initial: int, desc: str, unit: str, enabled: bool = True):
        self._bar = None
        if enabled:
            from tqdm import tqdm
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step",
                             dynamic_ncols=True, mininterval=1.0)
        self._unit = unit

    def update_to(self, step: int, loss: float, rate: float) -> None:
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix_str(f"loss={loss:.4g} {rate:.1f} {self._unit}/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
