"""Checkpoint drills: nothing non-finite is saved, restores verify and fall back (deleting
nothing), other data or models are refused by name, failed writes stop at once, killed and
preempted runs resume bit-exactly (stage 1 and stage 2)."""
import errno
import glob
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from lvt_jax import checkpoint, trainer
from lvt_jax.data import codes as codes_lib
from lvt_jax.data import pipeline
from lvt_jax.stages.transformer import TransformerStage
from lvt_jax.stages.vqvae import VQVAEStage
from tests.helpers import flat, mesh_of, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3


def _cfg(data_dir, **overrides):
    return tiny_config(data_dir, **{"num_steps": STEPS, "checkpoint_every": 1, "keep": 3,
                                    **overrides})


@pytest.fixture(scope="module")
def reference(tiny_data_dir, tmp_path_factory):
    """An uninterrupted 3-step stage-1 run, a checkpoint every step: (config, workdir, state)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    cfg = _cfg(tiny_data_dir)
    state, _ = trainer.train(VQVAEStage(cfg), workdir, mesh_of(2))
    return cfg, workdir, jax.device_get(state)


def _ckpt_dir(workdir) -> str:
    return os.path.join(str(workdir), "vqvae", "checkpoints")


def _steps(workdir) -> list[int]:
    return sorted(int(n) for n in os.listdir(_ckpt_dir(workdir)) if n.isdigit())


def _files(directory) -> dict[str, int]:
    """Every file below `directory` with its size: the 'nothing was deleted' evidence."""
    out = {}
    for d, _, names in os.walk(directory):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, directory)] = os.path.getsize(p)
    return out


def _copy(reference, tmp_path) -> str:
    workdir = str(tmp_path / "w")
    shutil.copytree(reference[1], workdir)
    return workdir


def _assert_same_state(a, b) -> None:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:  # bit-exact: params, optimiser, EMA codebooks, rng, step
        np.testing.assert_array_equal(fa[k], fb[k], err_msg=k)


def _abstract(cfg):
    return trainer.ShardedStage(VQVAEStage(cfg), mesh_of(2), trainer.shd.DEFAULT_RULES).abstract


# ------------------------------------------------------------------ corrupted checkpoints


def _largest_array_file(step_dir: str) -> str:
    files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
    return max(files, key=os.path.getsize)


def _truncate(step_dir, cfg):
    path = _largest_array_file(step_dir)
    os.truncate(path, os.path.getsize(path) // 2)


def _delete(step_dir, cfg):
    os.remove(_largest_array_file(step_dir))


def _flip(step_dir, cfg):
    path = _largest_array_file(step_dir)
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    open(path, "wb").write(bytes(data))


def _remove_metadata(step_dir, cfg):
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _poison(step_dir, cfg):
    """Replaces the step with a NaN state written without a manifest (as the trainer of
    issue 14 could: the state after the last finite loss, saved unchecked)."""
    directory, step = os.path.split(step_dir)
    ckpt = checkpoint.Checkpointer(directory, keep=3, async_save=False, read_only=True)
    restored = ckpt.restore(_abstract(cfg))
    ckpt.close()
    nan_params = jax.tree.map(lambda p: p * jnp.nan, restored.state.params)
    shutil.rmtree(step_dir)
    raw = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
        enable_async_checkpointing=False), item_names=("state", "data"))
    raw.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(restored.state.replace(params=nan_params)),
        data=ocp.args.JsonSave(restored.data)))
    raw.close()


CORRUPTIONS = {  # how the newest step is damaged -> what the fallback must report
    "truncated": (_truncate, r"reading it failed: .*OUT_OF_RANGE"),
    "deleted": (_delete, r"reading it failed"),
    "flipped": (_flip, r"checksum mismatch|NaN or inf|reading it failed"),  # whichever it hits
    "missing_metadata": (_remove_metadata, r"state/_METADATA is missing"),
    "poisoned": (_poison, r"NaN or inf in params/"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_newest_step_falls_back_loudly_deleting_nothing(reference, tmp_path, caplog,
                                                                  kind):
    cfg, _, _ = reference
    workdir = _copy(reference, tmp_path)
    damage, reason = CORRUPTIONS[kind]
    damage(os.path.join(_ckpt_dir(workdir), str(STEPS)), cfg)
    before = _files(workdir)
    with caplog.at_level(logging.ERROR, logger="lvt_jax.checkpoint"):
        state, step = trainer.restore_state(VQVAEStage(cfg), mesh_of(2), workdir)
    assert step == STEPS - 1
    assert all(np.isfinite(v).all() for v in flat(state.params).values())
    unusable = [r.getMessage() for r in caplog.records if "CHECKPOINT UNUSABLE" in r.getMessage()]
    assert len(unusable) == 1 and f"step {STEPS} in {_ckpt_dir(workdir)}" in unusable[0]
    assert re.search(reason, unusable[0]), unusable[0]
    assert any("CHECKPOINT FALLBACK: restored step 2" in r.getMessage() for r in caplog.records)
    assert _files(workdir) == before  # a read-only restore moves and deletes nothing


def test_training_falls_back_sets_the_bad_step_aside_and_resumes_bit_exactly(reference,
                                                                              tmp_path):
    cfg, _, ref_state = reference
    workdir = _copy(reference, tmp_path)
    bad = os.path.join(_ckpt_dir(workdir), str(STEPS))
    _truncate(bad, cfg)
    bad_files = _files(bad)
    state, results = trainer.train(VQVAEStage(cfg), workdir, mesh_of(2))
    assert results["step"] == STEPS
    _assert_same_state(state, ref_state)  # retrained step 3 from step 2: the same bits
    moved = os.path.join(_ckpt_dir(workdir), checkpoint.UNUSABLE_DIR, str(STEPS))
    assert _files(moved) == bad_files  # set aside whole, not deleted
    assert _steps(workdir) == [1, 2, 3]
    ckpt = checkpoint.Checkpointer(_ckpt_dir(workdir), keep=3, read_only=True)
    assert ckpt.restore(_abstract(cfg)).skipped == {}  # the rewritten step 3 verifies
    ckpt.close()


def test_no_usable_checkpoint_lists_every_step_and_deletes_nothing(reference, tmp_path):
    cfg, _, _ = reference
    workdir = _copy(reference, tmp_path)
    for step in (1, 2):
        _remove_metadata(os.path.join(_ckpt_dir(workdir), str(step)), cfg)
    _truncate(os.path.join(_ckpt_dir(workdir), "3"), cfg)
    before = _files(workdir)
    with pytest.raises(checkpoint.NoUsableCheckpointError) as e:
        trainer.train(VQVAEStage(cfg), workdir, mesh_of(2))
    msg = str(e.value)
    assert _ckpt_dir(workdir) in msg and "Nothing was deleted" in msg
    assert re.search(r"step 1: its array index state/_METADATA is missing.*step 2: .*"
                     r"step 3: reading it failed", msg), msg
    assert "aside" in msg and "--workdir" in msg  # what to do
    assert _files(workdir) == before


def test_config_change_names_the_arrays_and_config_fields(reference):
    cfg, workdir, _ = reference
    changed = _cfg(cfg.data.data_dir)
    changed.vqvae.model.channels = 16
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
        trainer.restore_state(VQVAEStage(changed), mesh_of(2), workdir)
    msg = str(e.value)
    assert f"checkpoint step 3 in {_ckpt_dir(workdir)}/3" in msg
    assert re.search(r"params/\S+/kernel has shape \(3, 3, 32, 32\) there but \(3, 3, 16, 16\) "
                     r"now", msg), msg
    assert "vqvae.model.channels: 32 in the checkpoint -> 16 now" in msg
    assert msg.index("params/") < msg.find("opt_state/") or "opt_state/" not in msg


def test_reused_workdir_with_other_data_is_refused_naming_both(reference, tmp_path):
    cfg, _, _ = reference
    workdir = _copy(reference, tmp_path)
    other = _cfg(str(tmp_path / "tfds"))  # same sizes, another generator seed
    other.data.synthetic.seed = 1
    before = _files(workdir)
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
        trainer.train(VQVAEStage(other), workdir, mesh_of(2))
    msg = str(e.value)
    assert f"checkpoint step 3 in {_ckpt_dir(workdir)}" in msg
    assert ("data.dataset: 'synthetic_pushing/train12_test4_seed0/2.0.0' (saved) vs "
            "'synthetic_pushing/train12_test4_seed1/2.0.0' (now)") in msg
    assert "another --workdir" in msg
    assert _files(workdir) == before  # refused before anything was trained, moved or written


def test_iterator_state_refuses_other_data_and_accepts_older_states():
    def make(identity):
        return pipeline.make_array_iterator(np.arange(10), lambda s, i, r: {"x": s[i]}, 10, 2,
                                            None, seed=0, train=True, identity=identity)

    it = make({"dataset": "a/1.0.0", "num_videos": 10})
    next(it)
    saved = json.loads(json.dumps(it.get_state()))
    it.close()
    assert saved["data"] == {"dataset": "a/1.0.0", "num_videos": 10}
    other = make({"dataset": "b/1.0.0", "num_videos": 10})
    with pytest.raises(ValueError, match=r"data\.dataset: 'a/1\.0\.0' \(saved\) vs 'b/1\.0\.0' "
                                         r"\(now\)"):
        other.set_state(saved)
    other.set_state({k: v for k, v in saved.items() if k != "data"})  # an older version's
    assert other.step == 1
    other.close()


# ------------------------------------------------------------------------ poisoned saves


class _ParamsTurnNaN(VQVAEStage):
    """Step 3's update makes the parameters NaN; its loss (computed before the update) is
    still finite, so only a check of the state itself can catch it before the save."""

    def train_step(self, state, batch):
        new, metrics = super().train_step(state, batch)
        params = jax.tree.map(lambda p: jnp.where(new.step >= 3, jnp.nan, p), new.params)
        return new.replace(params=params), metrics


def test_diverging_run_never_saves_a_non_finite_state(tiny_data_dir, tmp_path):
    cfg = _cfg(tiny_data_dir, num_steps=6, keep=2, log_every=100)
    with pytest.raises(checkpoint.NonFiniteStateError) as e:
        trainer.train(_ParamsTurnNaN(cfg), str(tmp_path), mesh_of(1))
    msg = str(e.value)
    assert re.search(r"state after step 3 holds NaN or inf in params/.*not saved\. The last "
                     r"good checkpoint is step 2 in " + re.escape(_ckpt_dir(tmp_path)), msg), msg
    assert _steps(tmp_path) == [1, 2]  # rotation (keep=2) kept the last finite step
    ckpt = checkpoint.Checkpointer(_ckpt_dir(tmp_path), keep=2, read_only=True)
    restored = ckpt.restore(trainer.ShardedStage(VQVAEStage(cfg), mesh_of(1),
                                                 trainer.shd.DEFAULT_RULES).abstract)
    ckpt.close()
    assert restored.step == 2 and restored.skipped == {}  # finite and intact
    assert not (tmp_path / "vqvae" / "eval.json").exists()


# ------------------------------------------------------------------------- failed writes


def test_unwritable_checkpoint_folder_fails_before_training(tiny_data_dir, tmp_path,
                                                            monkeypatch):
    """Simulated at os.mkdir (EACCES), since folder permissions do not stop root."""
    workdir = tmp_path / "new"
    ckpt_dir = _ckpt_dir(workdir)
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if os.path.abspath(path).startswith(ckpt_dir + os.sep):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_mkdir(path, *args, **kwargs)

    traced = []

    class Counting(VQVAEStage):
        def train_step(self, state, batch):
            traced.append(1)
            return super().train_step(state, batch)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(checkpoint.CheckpointSaveError,
                       match=f"cannot write checkpoints to {re.escape(ckpt_dir)}: Permission "
                             "denied.*Make the folder writable"):
        trainer.train(Counting(_cfg(tiny_data_dir)), str(workdir), mesh_of(1))
    assert not traced  # nothing was compiled or trained
    assert not workdir.exists()  # the empty folders this failed run made are gone


def _drill(data_dir, workdir, *args, timeout=400):
    """tests/drill.py in a fresh process; `timeout` only guards against a hang."""
    return subprocess.run(
        [sys.executable, "-m", "tests.drill", f"--workdir={workdir}", f"--data_dir={data_dir}",
         *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env=dict(os.environ, PYTHONPATH=ROOT))


def test_failed_save_stops_the_process_at_once_naming_step_and_path(tiny_data_dir, tmp_path):
    # orbax's own timeout would hold the process for 300 s: the guard is below that
    out = _drill(tiny_data_dir, tmp_path, f"--num_steps={STEPS}", "--deny_checkpoint_writes",
                 timeout=280)
    assert out.returncode == 1, out.stderr[-3000:]
    assert "DRILL FINISHED" not in out.stdout
    assert f"could not write checkpoint step 1 to {_ckpt_dir(tmp_path)}" in out.stderr
    assert "Permission denied" in out.stderr and "writable" in out.stderr


# ------------------------------------------------------------- killed and preempted runs


@pytest.mark.parametrize("kill, on_disk", [("--kill_before_step=3", [1, 2]),
                                           ("--kill_at_commit=2", [1])])
def test_killed_run_resumes_bit_exactly(reference, tiny_data_dir, tmp_path, kill, on_disk):
    cfg, _, ref_state = reference
    out = _drill(tiny_data_dir, tmp_path, f"--num_steps={STEPS}", kill)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert _steps(tmp_path) == on_disk
    if "commit" in kill:  # step 2 was written in full but never renamed into place
        assert glob.glob(os.path.join(_ckpt_dir(tmp_path), "2.orbax-checkpoint-tmp*"))
    state, results = trainer.train(VQVAEStage(cfg), str(tmp_path), mesh_of(2))
    assert results["step"] == STEPS
    _assert_same_state(state, ref_state)
    assert _steps(tmp_path) == [1, 2, 3]
    assert not glob.glob(os.path.join(_ckpt_dir(tmp_path), "*tmp*"))


def test_preemption_saves_and_exits_zero(reference, tiny_data_dir, tmp_path, monkeypatch):
    cfg = _cfg(tiny_data_dir, checkpoint_every=100)  # no regular save before the signal
    monkeypatch.setattr(checkpoint.Checkpointer, "reached_preemption",
                        lambda self, step: step == 2)
    with pytest.raises(SystemExit) as e:
        trainer.train(VQVAEStage(cfg), str(tmp_path), mesh_of(2))
    assert e.value.code == 0
    assert _steps(tmp_path) == [2]  # the forced save, complete before the exit
    assert not (tmp_path / "vqvae" / "eval.json").exists()
    ckpt = checkpoint.Checkpointer(_ckpt_dir(tmp_path), keep=3, read_only=True)
    restored = ckpt.restore(_abstract(cfg))
    ckpt.close()
    assert restored.step == 2 and restored.data["step"] == 2 and restored.skipped == {}


def test_stage2_resume_equals_uninterrupted(pipeline_run, tmp_path):
    """Stage 2's RNG and code-iterator position are restored: resumed from its step-2
    checkpoint, a 4-step run ends with the uninterrupted run's bits."""
    base, source = pipeline_run
    cfg = tiny_config(base.data.data_dir)
    cfg.transformer.codes_dir = os.path.join(source, "codes")
    cfg.transformer.train.update(num_steps=4, checkpoint_every=2, keep=2)
    straight, _ = trainer.train(TransformerStage(cfg), str(tmp_path / "a"), mesh_of(2))
    ckpts = os.path.join(tmp_path, "b", "transformer", "checkpoints")
    shutil.copytree(os.path.join(tmp_path, "a", "transformer", "checkpoints", "2"),
                    os.path.join(ckpts, "2"))  # as if killed after step 2's save
    resumed, results = trainer.train(TransformerStage(cfg), str(tmp_path / "b"), mesh_of(2))
    assert results["step"] == 4
    _assert_same_state(jax.device_get(straight), jax.device_get(resumed))

    def manifest(step):
        with open(os.path.join(ckpts, str(step), "manifest", "metadata")) as f:
            return json.load(f)["checksums"]
    changed = [k for k, v in manifest(2).items() if k.startswith("params/") and manifest(4)[k] != v]
    assert changed  # steps 3-4 changed the parameters: the comparison is not vacuous
    with open(os.path.join(ckpts, "4", "data", "metadata")) as f:
        data = json.load(f)["data"]  # the codes' identity travels with the iterator state
    assert data["dataset"] == "lvt_jax.codes/v1 of synthetic_pushing" and data["vqvae_step"] == 4


# --------------------------------------------------------------------------- durability


def test_code_shards_are_flushed_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.fspath(src), os.fspath(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    path = str(tmp_path / codes_lib.shard_name(0, 1))
    codes_lib.write_shard(path, [np.zeros((2, 4, 4, 4), np.int16)])
    tmp = f"{path}.tmp-{os.getpid()}"
    assert events == [("fsync", tmp), ("replace", tmp, path), ("fsync", str(tmp_path))]
