"""TensorBoard scalars/images (tensorboardX: no TensorFlow needed) and a progress bar."""
from __future__ import annotations

import numpy as np


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
            self._w = SummaryWriter(logdir=self._logdir, flush_secs=10)
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
