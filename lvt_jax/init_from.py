"""Fine-tuning: a training stage starts from another run's weights.

    --config.<section>.init_from=PATH      (section: vqvae, transformer, ...: the stage's)

PATH is one of
* a workdir: its latest checkpoint of this stage (PATH/<section>/checkpoints/<step>/);
* that stage folder, its checkpoints/ folder, or one checkpoint PATH/.../checkpoints/<step>;
* a checkpoint of the reference release, read as `lvt_jax.tools.import_reference` reads
  it (the VQ-VAE's OUTPUT_DIR with netE/ netG/ netC/, NETE,NETG,NETC files or one combined
  file; the transformer's .pth/.npz file or its folder).

Why a separate path from resuming: a fine-tuning run is a new run. It starts at step 0
with a fresh optimiser state and its own data order and RNG; only the model's variables
are the source's: `params` and the non-gradient `extra` (for the VQ-VAE the codebooks and
their EMA statistics, so the quantiser continues where the source stopped). Nothing here
is stage-specific: the source's params/extra are matched leaf by leaf (path, shape) onto
the stage's abstract state, so a stage only names its config section
(`Stage.config_section`). A mismatch names every differing parameter path and the config
field(s) to change: exactly, from the source's recorded model settings when it was trained
by this project, otherwise by matching the differing sizes against the settings.

How a stage's run started is recorded in WORKDIR/<section>/checkpoints/origin.json (its
model settings and, when fine-tuned, the source: path, checkpoint, step) and logged. The
trainer calls the initializer only when the stage has no checkpoint of its own: rerunning
a fine-tuning run resumes it, never the source (the log says so).
"""
from __future__ import annotations

import contextlib
import datetime
import logging
from typing import Any, Callable

import jax
import numpy as np

from lvt_jax import fileio

log = logging.getLogger(__name__)

ORIGIN_FILE = "origin.json"


class InitFromError(ValueError):
    """The fine-tuning source is missing, unreadable or does not fit the model."""


# --------------------------------------------------------------------------- sources


def _field(section: str) -> str:
    return f"{section}.init_from"


def check_config(config: Any, section: str) -> str | None:
    """The configured source (None: train from scratch); fails fast on a missing path."""
    spec = config[section].get("init_from", None)
    if not spec:
        return None
    parts = [p.strip() for p in str(spec).split(",")] if "," in str(spec) else [str(spec)]
    missing = [p for p in parts if not fileio.exists(fileio.absolute(p))]
    if missing:
        raise InitFromError(
            f"{_field(section)}={spec}: {', '.join(missing)} does not exist. Pass a workdir "
            f"(its latest '{section}' checkpoint), one of its checkpoints "
            f"(WORKDIR/{section}/checkpoints/<step>), or a reference-release checkpoint "
            "(see python -m lvt_jax.tools.import_reference --help).")
    return str(spec)


def _steps_in(directory: str) -> list[int]:
    """Finished orbax steps (a digit-named folder holding `state/`; unfinished saves carry
    a temporary suffix)."""
    if not fileio.isdir(directory):
        return []
    return sorted(int(n) for n in fileio.listdir(directory)
                  if n.isdigit() and fileio.isdir(fileio.join(directory, n, "state")))


def find_checkpoint(path: str, section: str) -> str | None:
    """PATH (workdir, stage folder, checkpoints folder or one step) -> the step folder to
    read, or None when PATH holds no checkpoint of this project (a reference file)."""
    path = fileio.absolute(path)
    if fileio.basename(path).isdigit() and fileio.isdir(fileio.join(path, "state")):
        return path
    for directory in (fileio.join(path, section, "checkpoints"),
                      fileio.join(path, "checkpoints"), path):
        steps = _steps_in(directory)
        if steps:
            return fileio.join(directory, str(steps[-1]))
    return None


def _tree_of(metadata: Any) -> Any:
    return getattr(metadata, "tree", metadata)


def read_checkpoint(step_dir: str, section: str) -> tuple[dict, dict]:
    """(params, extra) of one checkpoint as host numpy trees (the optimiser state is not
    read), on any number of devices."""
    import orbax.checkpoint as ocp
    from etils import epath

    state_dir = epath.Path(step_dir) / "state"
    handler = ocp.PyTreeCheckpointHandler()
    try:
        tree = _tree_of(handler.metadata(state_dir))
        if not isinstance(tree, dict) or "params" not in tree:
            raise InitFromError(f"{step_dir} is not a checkpoint of a training stage (no "
                                "'params' in its state).")
        want = {k: tree[k] for k in ("params", "extra") if k in tree}
        item = jax.tree.map(lambda m: np.zeros((), m.dtype), want)
        args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), want)
        out = handler.restore(state_dir, args=ocp.args.PyTreeRestore(
            item=item, restore_args=args, partial_restore=True))
    except InitFromError:
        raise
    except Exception as e:  # noqa: BLE001 - a damaged or foreign checkpoint: say which
        raise InitFromError(
            f"{_field(section)}: cannot read the checkpoint {step_dir}: {type(e).__name__}: "
            f"{e}. Pass another one (WORKDIR/{section}/checkpoints/<step>).") from e
    finally:
        handler.close()
    return out["params"], out.get("extra") or {}


def _read_json(path: str) -> Any:
    try:
        return fileio.read_json(path)
    except (OSError, ValueError):
        return None


def load_source(config: Any, section: str, spec: str) -> dict:
    """The source's variables: {params, extra, step, kind, path, model (its recorded
    model settings, or None)}."""
    step_dir = find_checkpoint(spec, section)
    if step_dir is not None:
        params, extra = read_checkpoint(step_dir, section)
        origin = _read_json(fileio.join(fileio.dirname(step_dir), ORIGIN_FILE)) or {}
        return dict(params=params, extra=extra, step=int(fileio.basename(step_dir)),
                    kind="checkpoint", path=step_dir, model=origin.get("model"))
    if fileio.isdir(spec) and fileio.isdir(fileio.join(spec, section)):
        raise InitFromError(f"{_field(section)}={spec}: {fileio.join(spec, section)} holds no "
                            "finished checkpoint; train that stage first, or pass another run.")
    from lvt_jax.tools import import_reference as ref
    try:
        with contextlib.ExitStack() as stack:  # the release's files in a bucket: local copies
            local = ",".join(stack.enter_context(fileio.local_copy(p.strip()))
                             for p in spec.split(","))
            params, extra, step = ref.reference_variables(config, section, local)
    except ref.ReferenceImportError as e:
        hints = suggest_fields(config[section].get("model", {}), section,
                               [(n, w, g) for n, w, g in e.mismatched])
        raise InitFromError(f"{_field(section)}={spec}: {e}" + "".join(
            f"\n  {h}" for h in hints)) from e
    except ref.ImportToolError as e:
        raise InitFromError(
            f"{_field(section)}={spec}: no checkpoint of this project's '{section}' stage "
            f"there (WORKDIR/{section}/checkpoints/<step>/), and as a reference-release "
            f"checkpoint: {e}") from e
    return dict(params=params, extra=extra, step=int(step), kind="reference",
                path=fileio.absolute(spec) if "," not in spec else spec, model=None)


# --------------------------------------------------------------------------- matching


def _flat(tree: Any) -> dict[str, Any]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                     for k in path): leaf for path, leaf in leaves}


def suggest_fields(model_cfg: Any, section: str, mismatched: list[tuple],
                   source_model: dict | None = None) -> list[str]:
    """Which `<section>.model` fields to change, for shape mismatches [(path, this run's
    shape, source's shape)]: the fields that differ from the source's recorded settings
    when known, else the fields whose value is a size that differs."""
    ours = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg or {})
    if source_model:
        diff = sorted(k for k in set(ours) | set(source_model)
                      if ours.get(k) != source_model.get(k))
        return [f"set --config.{section}.model.{k}={_cli(source_model[k])} (the source's; "
                f"this run has {_cli(ours.get(k))})" for k in diff if k in source_model]
    hints = []
    for path, want, got in mismatched:
        sizes = {int(w) for w, g in zip(want, got) if w != g}
        if len(want) != len(got):
            sizes = set(int(w) for w in want) - set(int(g) for g in got)
        fields = [k for k, v in ours.items()
                  if (isinstance(v, int) and not isinstance(v, bool) and v in sizes)
                  or (isinstance(v, (tuple, list)) and any(x in sizes for x in v))]
        if fields:
            hints.append(f"{path}: this run's size(s) {sorted(sizes)} come from "
                         + " or ".join(f"{section}.model.{k}={_cli(ours[k])}" for k in fields)
                         + f"; the source has {tuple(got)}")
    return hints


def _cli(value: Any) -> str:
    return str(tuple(value)) if isinstance(value, list) else str(value)


def match_variables(abstract: Any, params: Any, extra: Any, section: str, model_cfg: Any,
                    source_model: dict | None = None) -> tuple[Any, Any]:
    """The source's params/extra, checked and cast, in the structure of the stage's
    abstract state (`abstract.params`, `abstract.extra`: ShapeDtypeStructs)."""
    out, problems, mismatched = [], [], []
    for name, want_tree, got_tree in (("params", abstract.params, params),
                                      ("extra", abstract.extra, extra)):
        want, got = _flat(want_tree), _flat(got_tree)
        for path in sorted(set(want) - set(got)):
            problems.append(f"  {name}/{path} {tuple(want[path].shape)}: not in the source")
        for path in sorted(set(got) - set(want)):
            problems.append(f"  {name}/{path} {tuple(np.shape(got[path]))}: only in the "
                            "source")
        leaves = []
        for path, w in want.items():
            if path not in got:
                continue
            g = np.asarray(got[path])
            if tuple(g.shape) != tuple(w.shape):
                problems.append(f"  {name}/{path}: this run {tuple(w.shape)}, source "
                                f"{tuple(g.shape)}")
                mismatched.append((f"{name}/{path}", tuple(w.shape), tuple(g.shape)))
            elif np.dtype(g.dtype).kind != np.dtype(w.dtype).kind:
                problems.append(f"  {name}/{path}: this run {np.dtype(w.dtype).name}, source "
                                f"{g.dtype.name}")
            elif g.dtype.kind == "f" and not np.isfinite(g).all():
                problems.append(f"  {name}/{path}: the source holds non-finite values (a "
                                "diverged run): pass an earlier checkpoint")
            leaves.append(g.astype(w.dtype, copy=False))
        out.append(leaves)
    if problems:
        hints = suggest_fields(model_cfg, section, mismatched, source_model)
        if not hints and problems:
            hints = [f"compare {section}.model with the settings the source was trained "
                     "with (e.g. a number of layers or blocks: parameters missing on one side)"]
        raise InitFromError(
            f"{_field(section)}: the source does not fit this run's model "
            f"({len(problems)} problem{'s' if len(problems) > 1 else ''}):\n"
            + "\n".join(problems[:40]) + ("\n  ..." if len(problems) > 40 else "")
            + "\nTo fine-tune, the model settings must be the source's:\n"
            + "\n".join(f"  {h}" for h in hints))
    params = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract.params), out[0])
    extra = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(abstract.extra), out[1])
    return params, extra


# --------------------------------------------------------------------------- the hook


def fresh_state(bound: Any, params: Any, extra: Any) -> Any:
    """A stage's step-0 state holding the given params/extra, created directly sharded:
    fresh optimiser state (`stage.tx.init(params)`: moments start at zero, and an
    optimiser that keeps a copy of the params gets these), the config seed's RNG."""
    import flax.linen as nn
    stage, shardings = bound.stage, bound.shardings
    params = jax.device_put(params, shardings.params)  # each process puts its own shards
    extra = jax.device_put(extra, shardings.extra)

    def build(params, extra, rng):
        state = nn.unbox(stage.init(rng))  # its random params are dead code for XLA
        tx = getattr(stage, "tx", None)
        opt_state = tx.init(params) if tx is not None else state.opt_state
        return state.replace(params=params, extra=extra, opt_state=opt_state)

    with bound.context():
        return jax.jit(build, out_shardings=shardings)(params, extra, bound.rng)


def origin_path(workdir: str, stage: Any) -> str:
    """WORKDIR/<stage>/checkpoints/origin.json (beside the trainer's checkpoints)."""
    return fileio.join(workdir, stage.name, "checkpoints", ORIGIN_FILE)


def read_origin(workdir: str, stage: Any) -> dict | None:
    """How the stage's run in `workdir` started (None: not recorded)."""
    return _read_json(origin_path(workdir, stage))


def _write_origin(workdir: str, stage: Any, record: dict) -> None:
    if jax.process_index() != 0:
        return
    from lvt_jax.trainer import write_json
    path = origin_path(workdir, stage)
    fileio.makedirs(fileio.dirname(path))
    write_json(path, record)


def initializer(stage: Any, workdir: str) -> Callable[[Any], Any]:
    """The trainer's `init` hook for `stage`: builds the step-0 state, from
    `<section>.init_from` when set, and records how in origin.json.

    Called by the trainer only for a fresh start; when the stage already has checkpoints
    this only logs that the run resumes them (and whether init_from changed since)."""
    section = stage.config_section
    spec = check_config(stage.config, section)
    model_cfg = stage.config[section].get("model", {})
    own = _steps_in(fileio.dirname(origin_path(workdir, stage)))
    if own and spec:
        started = (read_origin(workdir, stage) or {}).get("init_from")
        log.info("%s: resuming this run's own checkpoint (step %d); %s=%s only chose its "
                 "start%s.", stage.name, own[-1], _field(section), spec,
                 "" if started == spec else f" (it started from {started or 'scratch'}; the "
                 "new setting is ignored while the run has checkpoints)")

    def init(bound: Any) -> Any:
        record = {"init_from": spec, "model": _jsonable(model_cfg),
                  "started": datetime.datetime.now().isoformat(timespec="seconds")}
        if spec is None:
            state = bound.init()
        else:
            source = load_source(stage.config, section, spec)
            params, extra = match_variables(bound.abstract, source["params"], source["extra"],
                                            section, model_cfg, source["model"])
            state = fresh_state(bound, params, extra)
            record["source"] = {k: source[k] for k in ("kind", "path", "step", "model")}
            log.info("%s: fine-tuning from %s (%s %s, step %d): its weights%s, a fresh "
                     "optimiser, step 0", stage.name, spec, source["kind"], source["path"],
                     source["step"], " and non-gradient variables" if source["extra"] else "")
        _write_origin(workdir, stage, record)
        return state

    return init


def _jsonable(cfg: Any) -> Any:
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def stage1_note(config: Any, workdir: str, stage1: Any, stage2: Any) -> None:
    """Logs whether stage 2's source fits the codes stage 1 makes in this workdir: a
    source transformer predicts the codes of the VQ-VAE it was trained with."""
    spec = check_config(config, stage2.config_section)
    if not spec:
        return
    origin = read_origin(workdir, stage1) or {}
    up = origin.get("init_from")
    if up is None:
        log.warning("%s: %s=%s, but this workdir's stage 1 was not started from a source "
                    "(%s): its codes are unrelated to those the source transformer predicts, "
                    "so little of it transfers. Set %s.init_from to the run (or reference "
                    "VQ-VAE) that source was trained with.", stage2.name,
                    _field(stage2.config_section), spec,
                    "trained from scratch" if origin else "no origin recorded",
                    stage1.config_section)
    else:
        log.info("%s: stage 1 started from %s; its codes are the source's only while stage 1 "
                 "is not trained further (num_steps=0): fine-tuning stage 2 on this workdir's "
                 "codes adapts it.", stage2.name, up)
