"""Command line: summary output contract and fast, clear errors on bad input."""
import json
import os
import subprocess
import sys
import time

import pytest

from configs import bair, demo
from lvt_jax import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_summary_last_line_is_json():
    out = subprocess.run([sys.executable, "-m", "lvt_jax.main", "--config=configs/bair.py",
                          "--mode=summary"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"vqvae": {"encoder": 1_777_024, "decoder": 1_776_771,
                                               "codebooks": 131_072, "total": 3_684_867}}
    assert any("encoder/conv2/kernel" in l for l in lines)  # the readable table came first


def test_config_overrides_and_variants():
    c = demo.get_config("tiny")
    assert c.vqvae.model.channels == 32 and c.data.name == "synthetic_pushing"
    with pytest.raises(ValueError, match="unknown variant"):
        bair.get_config("huge")


def test_indivisible_batch_fails_before_compiling(tmp_path):
    c = demo.get_config("tiny")
    c.vqvae.train.batch_size = 6  # 8 devices on the data axis
    t = time.perf_counter()
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by the 8"):
        run.run(c, str(tmp_path), "train_vqvae")
    assert time.perf_counter() - t < 10
    assert not (tmp_path / "vqvae").exists()


def test_unknown_mode_and_missing_workdir():
    with pytest.raises(ValueError, match="unknown --mode=bogus"):
        run.run(demo.get_config("tiny"), "/tmp/x", "bogus")
    with pytest.raises(ValueError, match="pass --workdir"):
        run.run(demo.get_config("tiny"), None, "train_vqvae")


def test_bad_mesh_is_explained():
    c = demo.get_config("tiny")
    c.mesh.update(data=3, fsdp=1, tensor=1)
    with pytest.raises(ValueError, match="needs 3 devices but 8 are available"):
        run.run(c, "/tmp/x", "train_vqvae")
