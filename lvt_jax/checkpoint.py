"""Orbax checkpoints of a stage: the TrainState, the data iterator's position and a
manifest. Never poisoned when written, verified before they are trusted.

Why it is built this way:

* Only finite states are saved. `Checkpointer.save` inspects the state first (a jitted
  reduction per array: a finite flag and a checksum) and refuses a non-finite one. Orbax writes
  a step into a temporary directory, renames it when complete and only then deletes the
  steps beyond `keep`. So the newest complete checkpoint is always finite, and rotation
  can never delete the last finite one (no preservation policy is needed for that).
* Each checkpoint carries a manifest: per-array checksums (uint32 sums of the raw bits,
  plain and position-weighted: exact integer arithmetic, so they do not depend on the
  sharding or the device count) and the config it was trained with.
* A restore checks before it trusts: the array index is readable; the shapes are those the
  config builds (if not, the config changed: stop, naming the arrays and the config fields
  that differ); the arrays read, are finite and match their checksums (zarr's compression
  has no checksum: flipped bytes often decode to plausible numbers). An unusable step is
  reported loudly and the previous one tried; nothing is deleted. With no usable step the
  error lists every step and what is wrong with it.
* Writes fail at once: step directories are created synchronously (created in the
  background, a failure leaves orbax's threads waiting five minutes on a signal before the
  process can exit) and every error names the step and the path.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from typing import Any, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from lvt_jax import fileio
from lvt_jax import sharding as shd

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "lvt_jax.checkpoint/v1"
UNUSABLE_DIR = "unusable"  # where a resumed run moves the steps it could not use
_MAX_LISTED = 6


class CheckpointError(RuntimeError):
    """A checkpoint cannot be written or used; the message names the step, path and fix."""


class CheckpointSaveError(CheckpointError):
    """Writing failed (folder not writable, disk full, ...)."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint was made with another model or data than this config's."""


class NoUsableCheckpointError(CheckpointError):
    """Checkpoints exist but none of them can be restored."""


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf (in the loss or in the state)."""


class NonFiniteStateError(NonFiniteError):
    """The state about to be saved holds NaN or inf; it was not saved."""


class _Unusable(Exception):
    """One step cannot be restored (the message says why); older steps may still work."""


# ----------------------------------------------------------------------- state inspection


def array_name(path: tuple) -> str:
    """A pytree key path as 'params/encoder/conv1/kernel' (same for a TrainState and for
    the nested dicts orbax stores it as)."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _words(x: jax.Array) -> jax.Array:
    """The raw bits of `x` as uint32 words (one per element; two for 8-byte types)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = x.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2)
    unsigned = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


@jax.jit
def _summary(x: jax.Array) -> jax.Array:
    """uint32 [3] of one array: all finite, sum of words, position-weighted sum of words.

    Integer sums wrap exactly, so they are the same for any sharding and reduction order;
    the position weights make swapped or shifted words count. One jit per array (cached
    per shape): on CPU it compiles 3x and runs 5x faster than one program over a whole
    paper-size state (809 arrays, 17 distinct shapes)."""
    w = _words(x)
    flat_index = jnp.zeros(w.shape, jnp.uint32)  # built from iotas: no reshape of a
    stride = 1                                   # sharded array
    for axis in reversed(range(w.ndim)):
        iota = jax.lax.broadcasted_iota(jnp.uint32, w.shape, axis)
        flat_index = flat_index + iota * np.uint32(stride % 2**32)
        stride *= w.shape[axis]
    finite = jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else True
    return jnp.stack([jnp.asarray(finite, jnp.uint32), jnp.sum(w, dtype=jnp.uint32),
                      jnp.sum(w * (2 * flat_index + 1), dtype=jnp.uint32)])


def _host(x: jax.Array) -> np.ndarray:
    """A small result on the host; a replicated one without a collective."""
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    return np.asarray(shd.fetch(x))


@dataclasses.dataclass(frozen=True)
class StateReport:
    nonfinite: list[str]          # names of the arrays holding NaN or inf
    checksums: dict[str, str]     # array name -> 16 hex digits


def inspect(state: Any) -> StateReport:
    """Finite flags and checksums of every array of `state` (a small jitted reduction per
    array, dispatched all at once). Every process must call it (arrays may span them)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    names = [array_name(p) for p, _ in leaves]
    rows = [_summary(jnp.asarray(x)) for _, x in leaves]
    table = np.stack([_host(r) for r in rows]) if rows else np.zeros((0, 3), np.uint32)
    return StateReport(
        nonfinite=[n for n, row in zip(names, table) if not row[0]],
        checksums={n: f"{int(row[1]):08x}{int(row[2]):08x}" for n, row in zip(names, table)})


# ------------------------------------------------------------------------ the checkpointer


@dataclasses.dataclass
class Restored:
    state: Any
    data: dict                    # the data iterator's state
    step: int
    skipped: dict[int, str]       # newer steps that were unusable, with the reason


class Checkpointer:
    """One stage's checkpoints in `directory`: guarded saves, verified restores.

    read_only: for modes that only restore (encode, sample, evaluate): nothing is created,
    rotated or moved.
    """

    def __init__(self, directory: str, keep: int, async_save: bool = True,
                 read_only: bool = False):
        self.directory = fileio.absolute(directory)
        self.keep, self.async_save, self.read_only = int(keep), bool(async_save), read_only
        self._in_flight: int | None = None  # a save handed to orbax, not known complete
        self._failed = False
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager | None:
        if self.read_only and not fileio.isdir(self.directory):
            return None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=None if self.read_only else self.keep, create=not self.read_only,
            enable_async_checkpointing=self.async_save,
            async_options=ocp.AsyncOptions(create_directories_asynchronously=False))
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    "data": ocp.JsonCheckpointHandler(),
                    "manifest": ocp.JsonCheckpointHandler()}
        try:
            return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        except OSError as e:
            raise CheckpointSaveError(
                f"cannot create the checkpoint folder {self.directory}: {_os_error(e)}. Make "
                "its parent writable or point --workdir elsewhere.") from e

    # -- what is on disk
    def steps(self) -> list[int]:
        """Complete steps, ascending. Unfinished saves are temporary directories locally;
        in an object store (no atomic rename) orbax writes into the step's folder and
        marks it complete last (commit_success.txt), which is checked instead."""
        if not fileio.isdir(self.directory):
            return []
        remote = fileio.is_remote(self.directory)
        return sorted(int(n) for n in fileio.listdir(self.directory)
                      if n.isdigit() and fileio.isdir(self.step_dir(int(n)))
                      and (not remote or ocp.path.step.is_path_finalized(self.step_dir(int(n)))))

    def latest_step(self) -> int | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def describe_latest(self) -> str:
        """'step N in DIR' for the newest complete checkpoint (after pending saves end)."""
        self.wait()
        latest = self.latest_step()
        return (f"step {latest} in {self.directory}" if latest is not None
                else f"none (no checkpoint was written to {self.directory} yet)")

    # -- saving
    def check_writable(self) -> None:
        """Fails now, naming the folder, if checkpoints could not be written there."""
        probe = fileio.join(self.directory,
                            f".write-probe-{jax.process_index()}-{os.getpid()}")
        try:
            if fileio.is_remote(probe):  # an object store: write and delete an object
                fileio.write_bytes(probe, b"")
                fileio.remove(probe)
            else:
                os.mkdir(probe)
                os.rmdir(probe)
        except Exception as e:  # noqa: BLE001 - OSError locally; any client error remotely
            why = _os_error(e) if isinstance(e, OSError) else f"{type(e).__name__}: {_brief(e)}"
            raise CheckpointSaveError(
                f"cannot write checkpoints to {self.directory}: {why}. Make the folder "
                "writable (and check that there is free space, or for a bucket the "
                "credentials) or point --workdir elsewhere.") from e

    def save(self, step: int, state: Any, data_state: dict | None, config: Any = None,
             force: bool = False) -> None:
        """Saves `state` (asynchronously) unless it holds NaN or inf, which raises instead."""
        report = inspect(state)
        if report.nonfinite:
            raise NonFiniteStateError(
                f"the state after step {step} holds NaN or inf in {_listed(report.nonfinite)}; "
                f"it was not saved. The last good checkpoint is {self.describe_latest()}. "
                "Lower the learning rate or check the input data, then rerun to resume from it.")
        manifest = {"format": MANIFEST_FORMAT, "step": int(step),
                    "checksums": report.checksums, "config": _jsonable_config(config)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=ocp.args.JsonSave(data_state or {}),
                                  manifest=ocp.args.JsonSave(manifest))
        try:
            self.manager.save(step, args=args, force=force)
        except Exception as e:  # noqa: BLE001 - any failure: name the step and the path
            raise self._save_error(step, e) from e
        self._in_flight = int(step)

    def _save_error(self, step: int | None, error: BaseException) -> CheckpointSaveError:
        failed = self._in_flight if self._in_flight is not None else step
        self._in_flight, self._failed = None, True
        latest = self.latest_step()
        resume = (f"rerun to resume from step {latest}, the last complete checkpoint"
                  if latest is not None else "rerun to start again")
        return CheckpointSaveError(
            f"could not write checkpoint step {failed} to {self.directory}: "
            f"{type(error).__name__}: {_brief(error)}. Make sure the folder is writable and "
            f"has free space, then {resume}.")

    def wait(self) -> None:
        """Blocks until pending saves are complete; raises CheckpointSaveError if one failed."""
        if self.manager is None or self._failed:
            return
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            raise self._save_error(None, e) from e
        self._in_flight = None

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def close(self) -> None:
        """Waits for pending saves (raising if one failed, unless a failure was reported)."""
        if self.manager is None:
            return
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception as e:  # noqa: BLE001 - already failed: do not mask the first error
                if not self._failed:
                    raise
                log.debug("closing %s after a failed save: %s", self.directory, e)
            self.manager = None

    # -- restoring
    def restore(self, abstract_state: Any, config: Any = None) -> Restored | None:
        """The newest usable checkpoint onto the shardings of `abstract_state`
        (ShapeDtypeStructs), or None if there is none. Older steps are tried when newer
        ones are unusable (logged loudly); nothing is deleted.

        Raises CheckpointMismatchError if the checkpoint does not fit the model `config`
        builds, NoUsableCheckpointError if no step can be used.
        """
        steps = self.steps()
        if not steps:
            return None
        skipped: dict[int, str] = {}
        for step in reversed(steps):
            try:
                state, data = self._restore_step(step, abstract_state, config)
            except _Unusable as e:
                skipped[step] = str(e)
                log.error("CHECKPOINT UNUSABLE: step %d in %s: %s", step,
                          self.step_dir(step), e)
                continue
            if skipped:
                log.error(
                    "CHECKPOINT FALLBACK: restored step %d from %s instead of the newer "
                    "step(s) %s, which are unusable (reasons above). Nothing was deleted.",
                    step, self.directory, sorted(skipped))
            return Restored(state, data, step, skipped)
        listing = "; ".join(f"step {s}: {r}" for s, r in sorted(skipped.items()))
        raise NoUsableCheckpointError(
            f"none of the checkpoints in {self.directory} can be restored ({listing}). "
            "Nothing was deleted. Restore the step folders from a backup, or start this "
            f"stage afresh by moving {self.directory} aside (or use another --workdir).")

    def step_dir(self, step: int) -> str:
        return fileio.join(self.directory, str(step))

    def restore_step(self, step: int, abstract_state: Any, config: Any = None
                     ) -> tuple[Any, dict]:
        """(state, data-iterator state) of one given step, verified like `restore` (an
        unusable step raises CheckpointError naming why; no fallback)."""
        try:
            return self._restore_step(step, abstract_state, config)
        except _Unusable as e:
            raise CheckpointError(f"step {step} in {self.step_dir(step)} cannot be used: {e}") \
                from None

    def _restore_step(self, step: int, abstract_state: Any, config: Any) -> tuple[Any, dict]:
        try:
            saved_tree = self.manager.item_metadata(step)["state"]
        except Exception as e:  # noqa: BLE001
            raise _Unusable(f"its array index (state/_METADATA) cannot be read: {_brief(e)}")
        if saved_tree is None or not fileio.exists(
                fileio.join(self.step_dir(step), "state", "_METADATA")):
            raise _Unusable("its array index state/_METADATA is missing (an incomplete copy?)")
        manifest = self._manifest(step)
        problems = _shape_problems(saved_tree, abstract_state)
        if problems:
            raise CheckpointMismatchError(_mismatch_message(
                step, self.step_dir(step), problems, (manifest or {}).get("config"), config))
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - missing, truncated or undecodable files
            raise _Unusable(f"reading it failed: {type(e).__name__}: {_brief(e)}")
        report = inspect(out["state"])
        if report.nonfinite:
            raise _Unusable(f"it holds NaN or inf in {_listed(report.nonfinite)}")
        if manifest is not None:
            saved = manifest.get("checksums", {})
            changed = [n for n, c in report.checksums.items() if n in saved and saved[n] != c]
            if changed:
                raise _Unusable(
                    f"the bytes of {_listed(changed)} differ from those saved (checksum "
                    "mismatch): its files were changed or damaged on disk")
        return out["state"], dict(out["data"] or {})

    def _manifest(self, step: int) -> dict | None:
        """The step's manifest; None for checkpoints written before manifests existed."""
        if not fileio.isdir(fileio.join(self.step_dir(step), "manifest")):
            return None
        try:
            out = self.manager.restore(step, args=ocp.args.Composite(
                manifest=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001
            raise _Unusable(f"its manifest cannot be read: {_brief(e)}")
        return dict(out["manifest"] or {})

    def set_aside(self, steps: Iterable[int]) -> dict[int, str]:
        """Moves unusable steps to DIR/unusable/ (renamed, never deleted), so that a run
        resumed from an older step can write those step numbers again. Returns where each
        went (on process 0, which moves them)."""
        if self.read_only:
            raise ValueError("a read-only Checkpointer does not move checkpoints")
        self.wait()
        moved: dict[int, str] = {}
        if jax.process_index() == 0:
            for step in sorted(steps):
                src = self.step_dir(step)
                if not fileio.isdir(src):
                    continue
                dst = fileio.join(self.directory, UNUSABLE_DIR, str(step))
                n = 1
                while fileio.exists(dst):
                    dst = fileio.join(self.directory, UNUSABLE_DIR, f"{step}.{n}")
                    n += 1
                fileio.makedirs(fileio.dirname(dst))
                fileio.rename(src, dst)
                moved[step] = dst
                log.error("CHECKPOINT SET ASIDE: unusable step %d moved to %s (kept for "
                          "inspection; move it back if it was only unreadable for a moment)",
                          step, dst)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f"lvt_jax.checkpoint.set_aside:{self.directory}")
        self.manager.close()
        self.manager = self._open()  # it caches the step list
        return moved


def abstract_with_shardings(abstract: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)


# ------------------------------------------------------------------------------ messages


def _shape_problems(saved_tree: Any, abstract: Any) -> list[str]:
    """Arrays whose presence, shape or dtype differ between a checkpoint and the model."""
    def table(tree):
        return {array_name(p): (tuple(x.shape), str(np.dtype(x.dtype)))
                for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
    saved, now = table(saved_tree), table(abstract)
    problems = []
    # the optimiser state mirrors the parameters: list the parameters first
    for name in sorted(set(saved) | set(now), key=lambda n: (n.startswith("opt_state"), n)):
        if name not in saved:
            problems.append(f"{name} is not in the checkpoint")
        elif name not in now:
            problems.append(f"{name} is in the checkpoint but not in this config's model")
        elif saved[name] != now[name]:
            (s_shape, s_dtype), (n_shape, n_dtype) = saved[name], now[name]
            what = (f"shape {s_shape} there but {n_shape} now" if s_shape != n_shape
                    else f"dtype {s_dtype} there but {n_dtype} now")
            problems.append(f"{name} has {what}")
    return problems


def _mismatch_message(step: int, where: str, problems: list[str], saved_config: Any,
                      config: Any) -> str:
    msg = (f"checkpoint step {step} in {where} does not fit the model this config builds: "
           f"{_listed(problems)}.")
    now = _jsonable_config(config)
    if saved_config is not None and now is not None:
        diffs = config_differences(saved_config, now)
        msg += (f" Config fields that differ from the checkpoint's: {_listed(diffs)}."
                if diffs else " The stored config is the same: the model code changed.")
    else:
        msg += (" (The checkpoint predates stored configs: compare this config with the one "
                "it was trained with.)")
    return msg + (" Use the settings the checkpoint was trained with, or train this config "
                  "in a fresh --workdir.")


def config_differences(saved: Mapping, now: Mapping) -> list[str]:
    """'a.b: saved -> now' for every differing config field, model fields first."""
    a, b = _flatten(saved), _flatten(now)
    keys = sorted((k for k in set(a) | set(b) if a.get(k) != b.get(k)),
                  key=lambda k: (".model." not in f".{k}.", k))
    return [f"{k}: {a.get(k)!r} in the checkpoint -> {b.get(k)!r} now" for k in keys]


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, Mapping):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _jsonable_config(config: Any) -> Any:
    if config is None:
        return None
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(d, default=str))


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f" (and {len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else "")


def _os_error(e: OSError) -> str:
    return f"{e.strerror or type(e).__name__}" + (f" ({e.filename})" if e.filename else "")


_STATUS = re.compile(r"\b(NOT_FOUND|DATA_LOSS|OUT_OF_RANGE|FAILED_PRECONDITION|"
                     r"INVALID_ARGUMENT|PERMISSION_DENIED|UNKNOWN|INTERNAL):[^\n]*")


def _brief(error: BaseException, limit: int = 300) -> str:
    """The informative line of an error chain (TensorStore's status line if there is one)."""
    chain, e = [], error
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for e in chain:
        m = _STATUS.search(str(e))
        if m:
            return m.group(0)[:limit]
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:limit]
