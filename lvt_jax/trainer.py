"""The training loop shared by every stage (VQ-VAE, Video Transformer, HDR).

State is created directly sharded (`jax.jit(init, out_shardings=...)`) or restored onto
the same shardings (the newest checkpoint that passes verification: see
`lvt_jax.checkpoint`); the step is jitted once; metrics are checked for non-finite values
one step behind (no pipeline stall) and always before a checkpoint is written, and the
state itself is checked by the checkpointer before it is saved, so a saved checkpoint
never holds a diverged state. A run that fails leaves no empty folders behind.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from lvt_jax import fileio
from lvt_jax import sharding as shd
from lvt_jax.metrics import image_grid
from lvt_jax.checkpoint import (CheckpointMismatchError, Checkpointer, NonFiniteError,
                                abstract_with_shardings)
from lvt_jax.stages.base import Stage
from lvt_jax.train_state import TrainState
from lvt_jax.writers import MetricWriter, ProgressBar
from lvt_jax import compile_options

log = logging.getLogger(__name__)


class NonFiniteLossError(NonFiniteError):
    """A training loss (or another metric) turned NaN or inf."""


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


def checkpointer_for(stage: Stage, workdir: str, async_save: bool = True,
                     read_only: bool = False) -> Checkpointer:
    return Checkpointer(fileio.join(workdir, stage.name, "checkpoints"),
                        keep=int(stage.train_cfg.keep), async_save=async_save,
                        read_only=read_only)


def restore_state(stage: Stage, mesh: Mesh, workdir: str, rules=None) -> tuple[TrainState, int]:
    """Newest usable checkpoint of a finished or running stage, on this mesh's shardings
    (read only: an unusable newer step is skipped with a loud log, never moved)."""
    rules = rules or shd.rules_from_config(stage.config)
    bound = ShardedStage(stage, mesh, rules)
    ckpt = checkpointer_for(stage, workdir, async_save=False, read_only=True)
    try:
        restored = ckpt.restore(bound.abstract, config=stage.config)
    finally:
        ckpt.close()
    if restored is None:
        raise FileNotFoundError(
            f"stage '{stage.name}' has no checkpoint under {ckpt.directory}; train it first "
            f"(--mode=train_{stage.name}) or point --workdir at a run that did.")
    return restored.state, restored.step


def _resume(stage: Stage, bound: ShardedStage, ckpt: Checkpointer, train_iter,
            init: Callable[[ShardedStage], TrainState] | None = None
            ) -> tuple[TrainState, int]:
    """The newest usable checkpoint and the iterator's position in it, or a fresh state.

    Unusable newer steps are moved aside (never deleted) so this run can write them again;
    a checkpoint of other data is refused before anything is moved."""
    restored = ckpt.restore(bound.abstract, config=stage.config)
    if restored is None:
        return (init(bound) if init is not None else bound.init()), 0
    try:
        train_iter.set_state(restored.data)
    except ValueError as e:
        raise CheckpointMismatchError(
            f"{stage.name}: cannot resume from checkpoint step {restored.step} in "
            f"{ckpt.directory}: {e}") from e
    if restored.skipped:
        ckpt.set_aside(restored.skipped)
    log.info("%s: resumed from step %d", stage.name, restored.step)
    return restored.state, restored.step


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
          periodic: PeriodicHook | None = None,
          init: Callable[[ShardedStage], TrainState] | None = None) -> tuple[TrainState, dict]:
    """Trains `stage` to train_cfg.num_steps (resuming if possible); returns (state, final eval).

    `init` builds the step-0 state when there is no checkpoint to resume (default: the
    stage's random init; fine-tuning passes lvt_jax.init_from's)."""
    with _no_empty_folders_on_failure([fileio.join(workdir, stage.name), workdir]):
        return _train(stage, workdir, mesh, on_eval, periodic, init)


@contextlib.contextmanager
def _no_empty_folders_on_failure(paths: list[str]):
    """If the body fails, removes those of `paths` (deepest first) that did not exist
    before and hold no file: empty folders only, never a file."""
    new = [p for p in paths if not fileio.exists(p)]
    try:
        yield
    except BaseException as e:
        if not (isinstance(e, SystemExit) and e.code in (0, None)):
            for path in new:
                fileio.remove_empty_dirs(path)
        raise


def _train(stage: Stage, workdir: str, mesh: Mesh,
           on_eval: Callable[[int, dict], None] | None,
           periodic: PeriodicHook | None,
           init: Callable[[ShardedStage], TrainState] | None) -> tuple[TrainState, dict]:
    cfg = stage.train_cfg
    rules = shd.rules_from_config(stage.config)
    bound = ShardedStage(stage, mesh, rules)
    stage_dir = fileio.join(workdir, stage.name)
    fileio.makedirs(stage_dir)
    num_steps = int(cfg.num_steps)
    primary = jax.process_index() == 0
    with contextlib.ExitStack() as cleanup:  # closes what was opened, in reverse, always
        ckpt = checkpointer_for(stage, workdir)
        cleanup.callback(ckpt.close)
        ckpt.check_writable()  # before any data is read or anything is compiled
        train_iter = stage.make_iterator("train", mesh, train=True)
        cleanup.callback(_close, train_iter)
        state, step = _resume(stage, bound, ckpt, train_iter, init)
        writer = MetricWriter(fileio.join(stage_dir, "tb"), enabled=primary)
        cleanup.callback(writer.close)
        bar = ProgressBar(total=num_steps, initial=step, desc=stage.name, unit=stage.unit,
                          enabled=primary and bool(cfg.get("progress", True)))
        cleanup.callback(bar.close)
        last_saved = ckpt.latest_step()
        pending: tuple[int, dict] | None = None
        window: list[dict] = []
        t0, items = time.perf_counter(), 0

        def check(step_and_metrics):
            s, m = step_and_metrics
            m = shd.fetch(m)
            bad = _first_nonfinite(m)
            if bad is not None:
                raise NonFiniteLossError(
                    f"{stage.name}: non-finite {bad} = {m[bad]} at step {s}; stopped. The last "
                    f"good checkpoint is {ckpt.describe_latest()}. Lower the learning rate or "
                    "check the input data, then rerun to resume from it.")
            return m

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
            if save_now or preempted:  # the checkpointer refuses a non-finite state
                ckpt.save(step, state, train_iter.get_state(), stage.config, force=preempted)
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
            ckpt.save(step, state, train_iter.get_state(), stage.config, force=True)
        ckpt.wait()
        results = bound.evaluate(state)
        results["step"] = int(step)
        writer.scalars(step, {f"final/{k}": v for k, v in results.items() if np.ndim(v) == 0})
        _write_images(writer, bound, state, step, png_dir=stage_dir if primary else None)
        if primary:
            write_json(fileio.join(stage_dir, "eval.json"), results)
        return state, results


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
            path = fileio.join(png_dir, name.split("/")[-1] + ".png")
            with fileio.staged_write(path, keep_ext=True) as tmp:
                Image.fromarray(grid).save(tmp)


def write_json(path: str, obj: dict) -> None:
    """Atomic, durable write (non-finite floats as strings): readers never see half a file."""
    fileio.write_json(path, _jsonable(obj))


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
