"""The memory comparison of both systems (python -m lvt_jax.bench memory), on tiny configs."""
import pytest

from configs import hdr_bair
from lvt_jax.bench import hdr


@pytest.fixture(scope="module")
def table():
    return hdr.memory_table(hdr_bair.get_config("tiny"), clips=8)


def test_every_stage_is_compiled_for_the_same_clips(table):
    rows = table["stages"]
    assert set(rows) == set(hdr.STAGES)
    frames = {name: row["frames"] for name, row in rows.items()}
    assert len(set(frames.values())) == 1, frames   # the VQ-VAE sees the clips' frames
    for row in rows.values():   # a real analysis: the step holds at least its parameters
        assert row["step_memory_bytes"] >= 4 * row["params"] > 0


def test_hdr_stage2_needs_less_memory_than_lvt_stage2(table):
    mem = {k: v["step_memory_bytes"] for k, v in table["stages"].items()}
    assert table["stage2_ratio"] == mem["hdr_predictor"] / mem["transformer"]
    assert table["total_ratio"] == (max(mem["hdr_autoencoder"], mem["hdr_predictor"])
                                    / max(mem["vqvae"], mem["transformer"]))
    assert table["stage2_ratio"] < 0.5


def test_an_lvt_config_is_refused_with_the_fix():
    from configs import demo
    with pytest.raises(ValueError, match="configs/hdr_bair.py"):
        hdr.memory_table(demo.get_config("tiny"), clips=8)


def test_a_batch_the_mesh_cannot_split_is_refused_before_compiling():
    with pytest.raises(ValueError, match="--batch"):
        hdr.compiled_memory("hdr_predictor", hdr_bair.get_config("tiny"), clips=3)
