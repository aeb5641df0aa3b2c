"""The training loop shared by every stage (VQ-VAE, Video Transformer, HDR).

State is created directly sharded (`jax.jit(init, out_shardings=...)`) or restored onto
the same shardings; the step is jitted once; metrics are checked for non-finite values
one step behind (no pipeline stall) and always before a checkpoint is written, so a
saved checkpoint never holds a diverged state.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lvt_jax import sharding as shd
from lvt_jax.metrics import image_grid
from lvt_jax.checkpoint import Checkpointer, abstract_with_shardings
from lvt_jax.stages.base import Stage
from lvt_jax.train_state import TrainState
from lvt_jax.writers import MetricWriter, ProgressBar
from lvt_jax import compile_options

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    pass


@contextlib.contextmanager
def mesh_context(mesh: Mesh, rules):
    """Mesh + logical axis rules active while tracing, so activation constraints apply."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
        yield


class ShardedStage:
    """A stage bound to a mesh: sharded state creation, restore and jitted steps."""

    def __init__(self, stage: Stage, mesh: Mesh, rules):
        self.stage, self.mesh, self.rules = stage, mesh, rules
        seed = int(stage.config.seed)
        self.rng = jax.random.key_data(jax.random.key(seed))
        with mesh_context(mesh, rules):
            boxed = jax.eval_shape(stage.init, self.rng)
        self.shardings = shd.logical_to_sharding(boxed, mesh, rules)
        self.abstract = abstract_with_shardings(nn.unbox(boxed), self.shardings)
        options = compile_options.for_devices(mesh.devices.flat)  # per platform
        self._train_step = jax.jit(stage.train_step, out_shardings=(self.shardings, None),
                                   donate_argnums=0, compiler_options=options)
        self._eval_step = jax.jit(stage.eval_step, compiler_options=options)

    def context(self):
        return mesh_context(self.mesh, self.rules)

    def init(self) -> TrainState:
        with self.context():
            return jax.jit(lambda r: nn.unbox(self.stage.init(r)),
                           out_shardings=self.shardings)(self.rng)

    def train_step(self, state, batch):
        with self.context():
            return self._train_step(state, batch)

    def eval_step(self, state, batch):
        with self.context():
            return self._eval_step(state, batch)

    def evaluate(self, state: TrainState, max_batches: int | None = None) -> dict:
        """One pass over the test split (or its first `max_batches` batches)."""
        it = self.stage.make_iterator("test", self.mesh, train=False)
        total = None
        try:
            for i, batch in enumerate(it):
                if max_batches is not None and i >= max_batches:
                    break
                sums = self.eval_step(state, batch)
                total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        finally:
            _close(it)  # stop its prefetch thread, also when we stop early
        if total is None:
            raise ValueError(f"the test split of stage '{self.stage.name}' yielded no batches")
        return self.stage.summarize_eval(shd.fetch(total))


def checkpointer_for(stage: Stage, workdir: str, async_save: bool = True) -> Checkpointer:
    return Checkpointer(os.path.join(workdir, stage.name, "checkpoints"),
                        keep=int(stage.train_cfg.keep), async_save=async_save)


def restore_state(stage: Stage, mesh: Mesh, workdir: str, rules=None) -> tuple[TrainState, int]:
    """Latest checkpoint of a finished or running stage, on this mesh's shardings."""
    rules = rules or shd.rules_from_config(stage.config)
    bound = ShardedStage(stage, mesh, rules)
    ckpt = checkpointer_for(stage, workdir, async_save=False)
    if ckpt.latest_step() is None:
        raise FileNotFoundError(
            f"stage '{stage.name}' has no checkpoint under {ckpt.directory}; train it first "
            f"(--mode=train_{stage.name}) or point --workdir at a run that did.")
    state, _, step = ckpt.restore(bound.abstract)
    ckpt.close()
    return state, step


def _first_nonfinite(metrics: dict) -> str | None:
    for k, v in metrics.items():
        if not np.all(np.isfinite(v)):
            return k
    return None


class PeriodicHook(Protocol):
    """Extra scalars every `every` steps (e.g. a sample-based FVD), logged as eval/*.

    Handed to `train` by the mode that runs it, so that a stage never imports the code
    that uses it (generators, evaluation)."""
    every: int

    def __call__(self, state: TrainState, step: int) -> dict[str, float]: ...


def train(stage: Stage, workdir: str, mesh: Mesh,
          on_eval: Callable[[int, dict], None] | None = None,
          periodic: PeriodicHook | None = None) -> tuple[TrainState, dict]:
    """Trains `stage` to train_cfg.num_steps (resuming if possible); returns (state, final eval)."""
    cfg = stage.train_cfg
    rules = shd.rules_from_config(stage.config)
    bound = ShardedStage(stage, mesh, rules)
    stage_dir = os.path.join(workdir, stage.name)
    os.makedirs(stage_dir, exist_ok=True)
    ckpt = checkpointer_for(stage, workdir)
    train_iter = stage.make_iterator("train", mesh, train=True)
    num_steps = int(cfg.num_steps)

    if ckpt.latest_step() is not None:
        state, data_state, step = ckpt.restore(bound.abstract)
        train_iter.set_state(data_state)
        log.info("%s: resumed from step %d", stage.name, step)
    else:
        state, step = bound.init(), 0

    primary = jax.process_index() == 0
    writer = MetricWriter(os.path.join(stage_dir, "tb"), enabled=primary)
    bar = ProgressBar(total=num_steps, initial=step, desc=stage.name, unit=stage.unit,
                      enabled=primary and bool(cfg.get("progress", True)))
    last_saved = ckpt.latest_step()
    pending: tuple[int, dict] | None = None
    window: list[dict] = []
    t0, items = time.perf_counter(), 0

    def check(step_and_metrics):
        s, m = step_and_metrics
        m = shd.fetch(m)
        bad = _first_nonfinite(m)
        if bad is not None:
            ckpt.wait()
            where = (f"the last good checkpoint is step {last_saved} in {ckpt.directory}"
                     if last_saved is not None else "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"{stage.name}: non-finite {bad} = {m[bad]} at step {s}; stopped, and {where}. "
                "Lower the learning rate or check the input data, then rerun to resume.")
        return m

    try:
        while step < num_steps:
            batch = next(train_iter)
            state, metrics = bound.train_step(state, batch)
            step += 1
            items += stage.items_per_step(batch)
            if pending is not None:
                window.append(check(pending))
            pending = (step, metrics)

            log_now = step % int(cfg.log_every) == 0 or step == num_steps
            save_now = step % int(cfg.checkpoint_every) == 0 or step == num_steps
            eval_now = int(cfg.eval_every) > 0 and step % int(cfg.eval_every) == 0 and step < num_steps
            preempted = ckpt.reached_preemption(step)
            if log_now or save_now or eval_now or preempted:
                window.append(check(pending))
                pending = None
            if log_now and window:
                dt = time.perf_counter() - t0
                scalars = {k: float(np.mean([w[k] for w in window])) for k in window[0]}
                scalars[f"{stage.unit}_per_s"] = items / max(dt, 1e-9)
                writer.scalars(step, {f"train/{k}": v for k, v in scalars.items()})
                bar.update_to(step, loss=scalars["loss"], rate=scalars[f"{stage.unit}_per_s"])
                window, t0, items = [], time.perf_counter(), 0
            if save_now or preempted:
                ckpt.save(step, state, train_iter.get_state(), force=preempted)
                last_saved = step
            if preempted:
                ckpt.wait()
                log.warning("%s: preemption signalled; checkpoint %d written, exiting", stage.name, step)
                raise SystemExit(0)
            if eval_now:
                t_eval = time.perf_counter()
                results = bound.evaluate(state, max_batches=cfg.get("eval_batches", None))
                writer.scalars(step, {f"eval/{k}": v for k, v in results.items()
                                      if np.ndim(v) == 0})
                _write_images(writer, bound, state, step)
                log.info("%s step %d eval: %s", stage.name, step, _brief(results))
                if on_eval:
                    on_eval(step, results)
                t0 += time.perf_counter() - t_eval  # keep eval time out of throughput
            every = int(periodic.every) if periodic is not None else 0
            if every > 0 and step % every == 0 and step < num_steps:
                t_extra = time.perf_counter()
                extra = periodic(state, step)
                writer.scalars(step, {f"eval/{k}": v for k, v in extra.items()})
                log.info("%s step %d: %s", stage.name, step, _brief(extra))
                t0 += time.perf_counter() - t_extra
        bar.close()
        if last_saved != step:
            ckpt.save(step, state, train_iter.get_state(), force=True)
        ckpt.wait()
        results = bound.evaluate(state)
        results["step"] = int(step)
        writer.scalars(step, {f"final/{k}": v for k, v in results.items() if np.ndim(v) == 0})
        _write_images(writer, bound, state, step, png_dir=stage_dir if primary else None)
        if primary:
            write_json(os.path.join(stage_dir, "eval.json"), results)
        return state, results
    finally:
        bar.close()
        writer.close()
        ckpt.close()
        close = getattr(train_iter, "close", None)
        if close:
            close()


def _close(it) -> None:
    close = getattr(it, "close", None)
    if close:
        close()


def _brief(results: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in results.items() if isinstance(v, (int, float)))


def _write_images(writer: MetricWriter, bound: ShardedStage, state, step: int,
                  png_dir: str | None = None) -> None:
    """Every process computes (collectives), the primary writes (and PNGs into png_dir)."""
    it = bound.stage.make_iterator("test", bound.mesh, train=False)
    try:
        batch = next(iter(it))
    finally:
        _close(it)
    with bound.context():
        grids = shd.fetch(bound.stage.images(state, batch))
    for name, rows in grids.items():
        grid = image_grid([np.asarray(r, np.uint8) for r in rows])
        writer.image(step, name, grid)
        if png_dir:
            from PIL import Image
            path = os.path.join(png_dir, name.split("/")[-1] + ".png")
            Image.fromarray(grid).save(path + ".tmp.png")
            os.replace(path + ".tmp.png", path)


def write_json(path: str, obj: dict) -> None:
    """Atomic write: a reader never sees a half-written file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return _jsonable(np.asarray(x).tolist())
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else str(float(x))
    if isinstance(x, (np.integer,)):
        return int(x)
    return x
