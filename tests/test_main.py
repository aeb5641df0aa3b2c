"""Command line: summary output contract and fast, clear errors on bad input."""
import json
import os
import subprocess
import sys

import pytest

from configs import bair, demo
from lvt_jax import run, trainer
from tests.helpers import CompileCounter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


VQVAE_COUNTS = {"encoder": 1_777_024, "decoder": 1_776_771, "codebooks": 131_072,
                "total": 3_684_867}
TRANSFORMER_COUNTS = {
    "": {"encoder": 22_902_848, "decoder": 23_294_400, "channel_predictor": 3_675_136,
         "total": 49_872_384},  # DSFVT, the default
    ":dstsvt": {"encoder": 32_862_656, "decoder": 23_292_736, "channel_predictor": 3_675_136,
                "total": 59_830_528},
}


@pytest.mark.parametrize("variant", ["", ":dstsvt"])
def test_summary_last_line_is_json(variant):
    out = subprocess.run([sys.executable, "-m", "lvt_jax.main",
                          f"--config=configs/bair.py{variant}", "--mode=summary"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"vqvae": VQVAE_COUNTS,
                                     "transformer": TRANSFORMER_COUNTS[variant]}
    assert any("encoder/conv2/kernel" in l for l in lines)  # the readable tables came first
    assert any("decoder/masked_conv/kernel" in l for l in lines)


def test_config_overrides_and_variants():
    c = demo.get_config("tiny")
    assert c.vqvae.model.channels == 32 and c.data.name == "synthetic_pushing"
    with pytest.raises(ValueError, match="unknown variant"):
        bair.get_config("huge")
    c = bair.get_config("dstsvt,tiny")  # variants combine
    assert c.transformer.model.stride == (2, 2, 2) and c.transformer.model.d_model == 32
    assert c.transformer.model.vocab_size == c.vqvae.model.codebook_size


@pytest.fixture
def no_training(monkeypatch):
    """The trainer fails if reached: a bad setting must be refused before it starts."""
    def reached(*args, **kwargs):
        raise AssertionError("training started before the bad setting was refused")
    monkeypatch.setattr(trainer, "train", reached)


def test_indivisible_batch_fails_before_compiling(tmp_path, no_training):
    c = demo.get_config("tiny")
    c.vqvae.train.batch_size = 6  # 8 devices on the data axis
    with CompileCounter() as compiled, \
            pytest.raises(ValueError, match="batch_size=6 is not divisible by the 8"):
        run.run(c, str(tmp_path), "train_vqvae")
    assert compiled.names == []
    assert not (tmp_path / "vqvae").exists()


def test_unknown_mode_and_missing_workdir():
    with pytest.raises(ValueError, match="unknown --mode=bogus"):
        run.run(demo.get_config("tiny"), "/tmp/x", "bogus")
    with pytest.raises(ValueError, match="pass --workdir"):
        run.run(demo.get_config("tiny"), None, "train_vqvae")


def test_stage2_mismatch_fails_before_stage1_trains(tmp_path, no_training):
    c = demo.get_config("tiny")
    c.transformer.model.vocab_size = 16  # stage 1 has 32 codes per codebook
    with CompileCounter() as compiled, \
            pytest.raises(ValueError, match="vocab_size=16 must equal stage 1's"):
        run.run(c, str(tmp_path), "all")
    assert compiled.names == []
    assert not (tmp_path / "vqvae").exists()
    c = demo.get_config("tiny")
    c.transformer.model.stride = (3, 1, 1)
    with pytest.raises(ValueError, match=r"stride=\(3, 1, 1\) must divide the clip"):
        run.run(c, str(tmp_path), "train_transformer")
    c = demo.get_config("tiny")
    c.transformer.train.batch_size = 12
    with pytest.raises(ValueError, match="transformer.train.batch_size=12 is not divisible"):
        run.run(c, str(tmp_path), "train_transformer")


def test_bad_mesh_is_explained():
    c = demo.get_config("tiny")
    c.mesh.update(data=3, fsdp=1, tensor=1)
    with pytest.raises(ValueError, match="needs 3 devices but 8 are available"):
        run.run(c, "/tmp/x", "train_vqvae")
