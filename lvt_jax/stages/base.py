"""What a training stage plugs into the shared trainer.

A stage supplies pure functions (init, train_step, eval_step) plus its data and summaries;
the trainer owns sharding, the loop, checkpoints, logging and the non-finite guard.
"""
from __future__ import annotations

import abc
from typing import Any, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from lvt_jax.train_state import TrainState


class Stage(abc.ABC):
    name: str = "stage"            # sub-directory of the workdir
    unit: str = "items"            # what throughput counts (frames, positions, ...)

    def __init__(self, config: Any):
        self.config = config

    @property
    def config_section(self) -> str:
        """The config section of this stage's settings (`model`, `train`, `init_from`)."""
        return self.name

    @property
    @abc.abstractmethod
    def train_cfg(self) -> Any:
        """ConfigDict with batch_size, num_steps, log_every, eval_every, checkpoint_every, keep."""

    @abc.abstractmethod
    def init(self, rng: jax.Array) -> TrainState:
        """Builds the state; may return logically boxed params (the trainer unboxes)."""

    @abc.abstractmethod
    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        """One optimisation step; metrics must contain a scalar 'loss'."""

    @abc.abstractmethod
    def eval_step(self, state: TrainState, batch: dict) -> dict:
        """Sums over the (masked) batch; the trainer adds them over the split."""

    @abc.abstractmethod
    def summarize_eval(self, sums: dict) -> dict:
        """Turns summed eval statistics into reported metrics (floats)."""

    @abc.abstractmethod
    def make_iterator(self, split: str, mesh: Mesh, *, train: bool) -> Iterator[dict]:
        """A batch iterator with get_state()/set_state()."""

    def items_per_step(self, batch: dict) -> int:
        return int(self.train_cfg.batch_size)

    def images(self, state: TrainState, batch: dict) -> dict[str, list[jax.Array]]:
        """Rows of uint8 images (N, H, W, 3) per TensorBoard grid; none by default."""
        return {}
