"""configs/kinetics600.py: the paper's Kinetics settings and their parameter counts."""
import json

import pytest

from configs import bair, kinetics600
from lvt_jax import run, summary, validate
from tests.helpers import mesh_of

DSFVT_COUNTS = {"encoder": 22_902_848, "decoder": 23_294_400, "channel_predictor": 3_675_136,
                "total": 49_872_384}


def residual_block_params(channels: int, res_channels: int) -> int:
    """One residual block from its layer shapes: conv 3x3 C -> R and conv 1x1 R -> C, biases."""
    return (3 * 3 * channels * res_channels + res_channels) + (res_channels * channels + channels)


def test_paper_settings():
    c = kinetics600.get_config()
    assert c.data.name == "kinetics600" and c.data.image_size == 64
    assert c.data.kinetics.fps is None and c.data.kinetics.min_frames == 16
    assert c.vqvae.model.num_res_blocks == 4 and bair.get_config().vqvae.model.num_res_blocks == 2
    assert c.vqvae.train.num_steps == 1_000_000 and c.vqvae.train.batch_size == 32
    assert c.vqvae.train.frames_per_video_sample == 1  # one random frame per video per sample
    assert c.vqvae.train.eval_frames_per_video == 16
    m = c.transformer.model
    assert m.variant == "dsfvt" and tuple(m.stride) == (16, 1, 1)
    assert tuple(m.clip_shape) == (16, 16, 16) and c.data.clip_length == 16
    assert c.transformer.train.n_prime == 1  # trained with 1 priming frame
    assert c.sample.n_prime == 5  # sampled / evaluated: 5 priming + 11 generated
    assert m.num_classes == 0  # class conditioning off by default
    assert kinetics600.get_config("classes").transformer.model.num_classes == 600
    with pytest.raises(ValueError, match="unknown variant"):
        kinetics600.get_config("huge")


@pytest.mark.parametrize("arg", ["tiny", "classes,tiny"])
def test_tiny_variants_validate(arg):
    c = kinetics600.get_config(arg)
    assert c.vqvae.model.num_res_blocks == 4  # same structure, tiny widths
    validate.pipeline(c, mesh_of(8))


def test_stage1_grows_by_exactly_two_residual_blocks_per_side():
    kin, _ = summary.vqvae_counts(kinetics600.get_config())
    ref, _ = summary.vqvae_counts(bair.get_config())
    m = bair.get_config().vqvae.model
    block = residual_block_params(m.channels, m.res_channels)
    assert block == 328_064
    assert kin["encoder"] - ref["encoder"] == 2 * block
    assert kin["decoder"] - ref["decoder"] == 2 * block
    assert kin["codebooks"] == ref["codebooks"] == 4 * 512 * 64
    assert kin["total"] == ref["total"] + 4 * block


def test_summary_mode_reports_the_counts(capsys):
    run.run(kinetics600.get_config(), None, "summary")
    lines = capsys.readouterr().out.strip().splitlines()
    counts = json.loads(lines[-1])
    block = residual_block_params(256, 128)
    assert counts["vqvae"] == {"encoder": 1_777_024 + 2 * block, "decoder": 1_776_771 + 2 * block,
                               "codebooks": 131_072, "total": 3_684_867 + 4 * block}
    assert counts["transformer"] == DSFVT_COUNTS  # unconditional: the paper's DSFVT exactly
    assert any("encoder/res3/conv2/kernel" in line for line in lines)
    assert any("decoder/res3/conv2/kernel" in line for line in lines)


def test_class_conditioning_adds_the_table_and_widens_the_projection():
    counts, rows = summary.transformer_counts(kinetics600.get_config("classes"))
    de, d = 128, 512
    shapes = {name: shape for name, shape, _ in rows}
    assert shapes["encoder/class_embedding"] == (600, de)
    assert shapes["encoder/proj"] == (2 * de, d)
    assert counts["encoder"] - DSFVT_COUNTS["encoder"] == 600 * de + de * d
    assert {k: counts[k] for k in ("decoder", "channel_predictor")} == {
        k: DSFVT_COUNTS[k] for k in ("decoder", "channel_predictor")}
    plain = {name for name, _, _ in summary.transformer_counts(kinetics600.get_config())[1]}
    assert not any("class" in name for name in plain)
