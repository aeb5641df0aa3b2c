"""launch/tpu_vm.sh and launch/slurm_gpu.sh: --dry-run prints every command; the real
commands are run against stand-ins for gcloud, sbatch/srun and python3 that act on
local folders (two fake TPU workers, a fake shared filesystem), so the code copy, the
one-time environment and the start command are checked end to end."""
import os
import re
import shlex
import subprocess

from lvt_jax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JAX_VERSION = re.search(r"^jax==(\S+)$", open(os.path.join(ROOT, "requirements.txt")).read(),
                        re.M).group(1)

# python3 -m venv DIR makes DIR/bin/{pip,python} that log their arguments (and the
# worker, $HOME's name) to $STUB_LOG instead of installing or training.
STUB_PYTHON3 = r"""#!/usr/bin/env bash
if [ "$1" = -m ] && [ "$2" = venv ]; then
  mkdir -p "$3/bin"
  for tool in pip python; do
    printf '#!/usr/bin/env bash\necho "%s $(basename "$HOME") $*" >> "$STUB_LOG"\n' "$tool" > "$3/bin/$tool"
    chmod +x "$3/bin/$tool"
  done
else
  exit 9
fi
"""
# gcloud compute tpus tpu-vm scp SRC NAME:DEST ... | ssh NAME ... --command=CMD, on every
# folder of $FAKE_WORKERS (its home).
STUB_GCLOUD = r"""#!/usr/bin/env bash
set -e
echo "gcloud $*" >> "$STUB_LOG"
op=$4; shift 4
case "$op" in
  scp) for w in "$FAKE_WORKERS"/*; do cp "$1" "$w/${2#*:}"; done ;;
  ssh) for a in "$@"; do case "$a" in --command=*) cmd=${a#--command=};; esac; done
       for w in "$FAKE_WORKERS"/*; do (cd "$w" && HOME="$w" bash -c "$cmd"); done ;;
esac
"""
STUB_SBATCH = r"""#!/usr/bin/env bash
echo "sbatch $*" >> "$STUB_LOG"
for a in "$@"; do case "$a" in --wrap=*) exec bash -c "${a#--wrap=}";; esac; done
"""
STUB_SRUN = r"""#!/usr/bin/env bash
echo "srun $1" >> "$STUB_LOG"
shift
exec "$@"
"""


def _stubs(tmp_path, **scripts) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "stub.log"
    log.touch()
    return dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STUB_LOG=str(log),
                TMPDIR=str(tmp_path))


def _sh(args, env, check=True) -> subprocess.CompletedProcess:
    out = subprocess.run(["bash", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def _log(env) -> list[str]:
    return open(env["STUB_LOG"]).read().splitlines()


def test_tpu_dry_run_prints_every_command_and_runs_none(tmp_path):
    env = _stubs(tmp_path, gcloud="#!/bin/sh\necho gcloud >> \"$STUB_LOG\"\n")
    setup = _sh(["launch/tpu_vm.sh", "--dry-run", "setup", "my-tpu", "us-central2-b"],
                env).stdout.splitlines()
    assert len(setup) == 4, setup
    assert "git ls-files" in setup[0] and "tar" in setup[0]
    scp, ssh = shlex.split(setup[1]), shlex.split(setup[3])
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert "--zone=us-central2-b" in ssh and "--worker=all" in ssh
    remote = [a for a in ssh if a.startswith("--command=")][0]
    assert f"'jax[tpu]=={JAX_VERSION}'" in remote and "-e '.[gcs]'" in remote
    assert "requirements.txt" in remote and ".stamp" in remote  # built once, then reused
    rev = _sh(["launch/tpu_vm.sh", "--dry-run", "setup", "t", "z", "--revision=HEAD"],
              env).stdout.splitlines()
    assert rev[0].startswith(f"git -C {ROOT} archive --format=tar.gz") and rev[0].endswith("HEAD")

    run = _sh(["launch/tpu_vm.sh", "--dry-run", "run", "my-tpu", "us-central2-b",
               "gs://bkt/runs/bair", "--config.mesh.fsdp=4"], env).stdout.splitlines()
    (line,) = run
    remote = [a for a in shlex.split(line) if a.startswith("--command=")][0]
    assert "--worker=all" in line
    assert ("~/lvt_jax_venv/bin/python -m lvt_jax.main --config=configs/bair.py "
            "--workdir=gs://bkt/runs/bair --distributed=auto --config.mesh.fsdp=4") in remote
    assert _log(env) == [] and sorted(os.listdir(tmp_path)) == ["bin", "stub.log"]
    bad = _sh(["launch/tpu_vm.sh", "--dry-run", "setup", "t", "z", "--revision=no-such-rev"],
              env, check=False)
    assert bad.returncode != 0 and "no-such-rev" in bad.stderr


def test_tpu_setup_ships_the_code_builds_once_then_runs_on_every_worker(tmp_path):
    workers = tmp_path / "workers"
    for w in ("w0", "w1"):
        (workers / w).mkdir(parents=True)
    env = dict(_stubs(tmp_path, gcloud=STUB_GCLOUD, python3=STUB_PYTHON3),
               FAKE_WORKERS=str(workers))
    _sh(["launch/tpu_vm.sh", "setup", "my-tpu", "z"], env)
    for w in ("w0", "w1"):
        code = workers / w / "lvt_jax"
        assert (code / "lvt_jax" / "fileio.py").read_bytes() == \
            open(os.path.join(ROOT, "lvt_jax", "fileio.py"), "rb").read()
        assert not list(code.rglob("__pycache__"))  # ignored files are not shipped
        assert not (workers / w / "lvt_jax.tgz").exists()
    pips = [line for line in _log(env) if line.startswith("pip ")]
    assert sorted(p.split()[1] for p in pips) == ["w0", "w1"]
    assert all(f"jax[tpu]=={JAX_VERSION}" in p and "-e .[gcs]" in p for p in pips)

    again = _sh(["launch/tpu_vm.sh", "setup", "my-tpu", "z"], env)
    assert [line for line in _log(env) if line.startswith("pip ")] == pips  # not rebuilt
    assert again.stdout.count("is up to date") == 2

    _sh(["launch/tpu_vm.sh", "run", "my-tpu", "z", "gs://bkt/run", "--mode=train_vqvae"], env)
    runs = [line.split() for line in _log(env) if line.startswith("python ")]
    assert sorted(r[1] for r in runs) == ["w0", "w1"]
    for r in runs:
        assert r[2:] == ["-m", "lvt_jax.main", "--config=configs/bair.py",
                         "--workdir=gs://bkt/run", "--distributed=auto", "--mode=train_vqvae"]


def test_slurm_dry_run_prints_every_command(tmp_path):
    env = dict(_stubs(tmp_path), LVT_HOME=str(tmp_path / "shared"), NODES="2",
               GPUS_PER_NODE="8")
    setup = _sh(["launch/slurm_gpu.sh", "--dry-run", "setup"], env).stdout.splitlines()
    assert len(setup) == 3 and f"'jax[cuda12]=={JAX_VERSION}'" in shlex.split(setup[2])[2]
    (submit,) = _sh(["launch/slurm_gpu.sh", "--dry-run", "submit", "gs://b/run",
                     "--config=configs/demo.py"], env).stdout.splitlines()
    words = shlex.split(submit)
    assert words[0] == "sbatch"
    for flag in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8"):
        assert flag in words
    wrap = [w for w in words if w.startswith("--wrap=")][0]
    assert "srun --kill-on-bad-exit=1" in wrap and "--distributed=auto" in wrap
    assert "--config=configs/demo.py" in wrap and "configs/bair.py" not in wrap
    assert not (tmp_path / "shared").exists()


def test_slurm_setup_once_and_submit(tmp_path):
    env = dict(_stubs(tmp_path, python3=STUB_PYTHON3, sbatch=STUB_SBATCH, srun=STUB_SRUN),
               LVT_HOME=str(tmp_path / "shared"), NODES="3")
    nothing = _sh(["launch/slurm_gpu.sh", "submit", "/runs/x"], env, check=False)
    assert nothing.returncode != 0 and "setup first" in nothing.stderr
    for _ in range(2):
        _sh(["launch/slurm_gpu.sh", "setup"], env)
    assert (tmp_path / "shared" / "code" / "launch" / "slurm_gpu.sh").exists()
    assert len([line for line in _log(env) if line.startswith("pip ")]) == 1  # once
    _sh(["launch/slurm_gpu.sh", "submit", "/runs/x", "--mode=encode"], env)
    log = _log(env)
    assert any(line.startswith("sbatch ") and "--nodes=3" in line for line in log)
    assert "srun --kill-on-bad-exit=1" in log
    run = [line.split() for line in log if line.startswith("python ")]
    assert run[0][2:] == ["-m", "lvt_jax.main", "--config=configs/bair.py",
                          "--workdir=/runs/x", "--distributed=auto", "--mode=encode"]


def test_one_slurm_task_per_node_drives_all_its_gpus():
    job = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}
    assert distributed.slurm_local_device_ids(
        dict(job, SLURM_NTASKS_PER_NODE="1", CUDA_VISIBLE_DEVICES="0,1,2,3")) == [0, 1, 2, 3]
    assert distributed.slurm_local_device_ids(
        dict(job, SLURM_TASKS_PER_NODE="1(x2)", SLURM_GPUS_ON_NODE="8")) == list(range(8))
    # one task per GPU, no SLURM, or one GPU: JAX's own choice
    assert distributed.slurm_local_device_ids(
        dict(job, SLURM_NTASKS_PER_NODE="8", CUDA_VISIBLE_DEVICES="0,1")) is None
    assert distributed.slurm_local_device_ids({"CUDA_VISIBLE_DEVICES": "0,1"}) is None
    assert distributed.slurm_local_device_ids(
        dict(job, SLURM_NTASKS_PER_NODE="1", CUDA_VISIBLE_DEVICES="0")) is None
