"""--mode=summary: parameter tables, built from shapes only (nothing is materialised)."""
from __future__ import annotations

import json
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util


def _count(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def vqvae_counts(config: Any) -> tuple[dict, list[tuple[str, tuple, int]]]:
    from lvt_jax.stages.vqvae import VQVAEStage
    stage = VQVAEStage(config)
    abstract = nn.unbox(jax.eval_shape(stage.init, jax.random.key_data(jax.random.key(0))))
    params = abstract.params
    books = abstract.extra["vq"]["quantizer"]["codebook"]
    counts = {"encoder": _count(params["encoder"]), "decoder": _count(params["decoder"]),
              "codebooks": _count(books)}
    counts["total"] = sum(counts.values())
    rows = [("/".join(k), tuple(v.shape), int(np.prod(v.shape)))
            for k, v in traverse_util.flatten_dict(params).items()]
    rows.append(("quantizer/codebook", tuple(books.shape), _count(books)))
    return counts, rows


def transformer_counts(config: Any) -> tuple[dict, list[tuple[str, tuple, int]]]:
    """Stage-2 counts per part (encoder, decoder, channel_predictor, total), from shapes."""
    from lvt_jax.models.lvt.transformer import count_params
    from lvt_jax.stages.transformer import TransformerStage
    stage = TransformerStage(config)
    abstract = nn.unbox(jax.eval_shape(stage.init, jax.random.key_data(jax.random.key(0))))
    counts = count_params(abstract.params)
    rows = [("/".join(k), tuple(v.shape), int(np.prod(v.shape)))
            for k, v in traverse_util.flatten_dict(abstract.params).items()]
    return counts, rows


def format_table(title: str, rows: list[tuple[str, tuple, int]], counts: dict) -> str:
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"== {title} ==", f"{'parameter':<{width}}{'shape':>22}{'count':>14}"]
    lines += [f"{n:<{width}}{str(s):>22}{c:>14,}" for n, s, c in rows]
    lines.append("-" * (width + 36))
    lines += [f"{k:<{width}}{'':>22}{v:>14,}" for k, v in counts.items()]
    return "\n".join(lines)


def hdr_autoencoder_counts(config: Any) -> tuple[dict, list[tuple[str, tuple, int]]]:
    """HDR stage-1 counts per part (encoder, slot attention, ..., total), from shapes."""
    from lvt_jax.stages.hdr_autoencoder import HDRAutoencoderStage
    stage = HDRAutoencoderStage(config)
    abstract = nn.unbox(jax.eval_shape(stage.init, jax.random.key_data(jax.random.key(0))))
    params = abstract.params
    counts = {k: _count(v) for k, v in params.items()}
    counts["total"] = _count(params)
    rows = [("/".join(k), tuple(v.shape), int(np.prod(v.shape)))
            for k, v in traverse_util.flatten_dict(params).items()]
    return counts, rows


def run(config: Any) -> dict:
    """Prints the tables; the last stdout line is one JSON object of counts per stage."""
    out = {}
    if str(config.get("system", "lvt")) == "hdr":
        counts, rows = hdr_autoencoder_counts(config)
        print(format_table("hdr_autoencoder (HDR stage 1)", rows, counts))
        out["hdr_autoencoder"] = counts
        print(json.dumps(out), flush=True)
        return out
    counts, rows = vqvae_counts(config)
    print(format_table("vqvae (stage 1)", rows, counts))
    out["vqvae"] = counts
    counts, rows = transformer_counts(config)
    variant = config.transformer.model.get("variant", "transformer")
    print(format_table(f"transformer (stage 2, {variant})", rows, counts))
    out["transformer"] = counts
    print(json.dumps(out), flush=True)
    return out
