"""A tiny stage-1 training in a process of its own, for the checkpoint drills.

python -m tests.drill --workdir=DIR --data_dir=DIR --num_steps=N [--kill_before_step=K |
    --kill_at_commit=K | --deny_checkpoint_writes]

--kill_before_step=K: SIGKILL while fetching step K's batch, once step K-1's checkpoint is
    complete (so the drill does not depend on how fast the asynchronous save is).
--kill_at_commit=K: SIGKILL once step K's checkpoint is written but before orbax renames it
    into place: the most complete-looking unfinished save.
--deny_checkpoint_writes: creating a step directory in the checkpoint folder fails with
    EACCES, as in a folder that is not writable (simulated at the os.mkdir call, since
    permissions do not stop root).
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import errno  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402


class _KillingIterator:
    """Delegates to a train iterator; SIGKILLs the process before batch `kill_before_step`,
    after waiting (up to 5 minutes) for the folder `wait_for` to appear."""

    def __init__(self, it, kill_before_step: int, wait_for: str):
        self._it, self._kill, self._wait_for = it, kill_before_step, wait_for

    def __iter__(self):
        return self

    def __next__(self):
        if self._it.step + 1 == self._kill:
            deadline = time.monotonic() + 300
            while not os.path.isdir(self._wait_for) and time.monotonic() < deadline:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGKILL)
        return next(self._it)

    def get_state(self):
        return self._it.get_state()

    def set_state(self, state):
        self._it.set_state(state)

    def close(self):
        self._it.close()


def _kill_at_commit(step: int) -> None:
    from orbax.checkpoint._src.path import atomicity
    finalize = atomicity.AtomicRenameTemporaryPath.finalize

    async def killing_finalize(self, *args, **kwargs):
        if self.get_final().name == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        return await finalize(self, *args, **kwargs)

    atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize


def _deny_step_directories(checkpoint_dir: str) -> None:
    mkdir = os.mkdir

    def denying_mkdir(path, *args, **kwargs):
        p = os.path.abspath(os.fspath(path))
        if p.startswith(checkpoint_dir + os.sep) and ".orbax-checkpoint-tmp" in p:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), p)
        return mkdir(path, *args, **kwargs)

    os.mkdir = denying_mkdir


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--num_steps", type=int, required=True)
    p.add_argument("--checkpoint_every", type=int, default=1)
    p.add_argument("--keep", type=int, default=3)
    p.add_argument("--kill_before_step", type=int, default=0)
    p.add_argument("--kill_at_commit", type=int, default=0)
    p.add_argument("--deny_checkpoint_writes", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    from lvt_jax import trainer
    from lvt_jax.stages.vqvae import VQVAEStage
    from tests.helpers import mesh_of, tiny_config

    checkpoint_dir = os.path.abspath(os.path.join(a.workdir, "vqvae", "checkpoints"))

    class Stage(VQVAEStage):
        def make_iterator(self, split, mesh, *, train):
            it = super().make_iterator(split, mesh, train=train)
            if not (train and a.kill_before_step):
                return it
            return _KillingIterator(it, a.kill_before_step,
                                    os.path.join(checkpoint_dir, str(a.kill_before_step - 1)))

    if a.kill_at_commit:
        _kill_at_commit(a.kill_at_commit)
    if a.deny_checkpoint_writes:
        _deny_step_directories(checkpoint_dir)
    cfg = tiny_config(a.data_dir, num_steps=a.num_steps, checkpoint_every=a.checkpoint_every,
                      keep=a.keep)
    trainer.train(Stage(cfg), a.workdir, mesh_of(2))
    print("DRILL FINISHED", flush=True)


if __name__ == "__main__":
    main()
