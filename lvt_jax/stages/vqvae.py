"""Stage 1 plug-in: the frame VQ-VAE trained on single frames."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lvt_jax import metrics as M
from lvt_jax import sharding as shd
from lvt_jax.metrics import to_model_input
from lvt_jax.models.lvt.vqvae import VQVAE
from lvt_jax.stages.base import Stage
from lvt_jax.train_state import TrainState


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    return optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


class VQVAEStage(Stage):
    name = "vqvae"
    unit = "frames"

    def __init__(self, config: Any):
        super().__init__(config)
        self.model = VQVAE(config.vqvae.model)
        self.tx = make_optimizer(config.vqvae.train)
        d = config.data
        self.image_shape = (d.image_size, d.image_size, 3)

    @property
    def train_cfg(self):
        return self.config.vqvae.train

    def init(self, rng: jax.Array) -> TrainState:
        x = jnp.zeros((1, *self.image_shape), jnp.float32)
        variables = self.model.init(jax.random.wrap_key_data(rng), x)
        params, extra = variables["params"], {"vq": variables["vq"]}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), extra=extra, rng=rng)

    def loss(self, params, extra, images):
        x = to_model_input(images)
        (x_hat, aux), new_vars = self.model.apply(
            {"params": params, **extra}, x, train=True, mutable=["vq"])
        recon = jnp.mean((x_hat - x) ** 2)
        loss = recon + self.config.vqvae.model.beta * aux["commitment"]
        psnr = jnp.mean(M.psnr(M.to_unit(x_hat), M.to_unit(x)))
        return loss, (dict(new_vars), {"loss": loss, "recon_mse": recon,
                                       "commitment": aux["commitment"], "psnr": psnr})

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        grad_fn = jax.value_and_grad(self.loss, has_aux=True)
        (_, (extra, metrics)), grads = grad_fn(state.params, state.extra, batch["image"])
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             extra=extra), metrics

    def reconstruct(self, state: TrainState, images: jax.Array):
        x = to_model_input(images)
        x_hat, aux = self.model.apply({"params": state.params, **state.extra}, x, train=False)
        return x, x_hat, aux["codes"]

    def eval_step(self, state: TrainState, batch: dict) -> dict:
        x, x_hat, codes = self.reconstruct(state, batch["image"])
        mask = batch["mask"].astype(jnp.float32)
        a, b = M.to_unit(x_hat), M.to_unit(x)
        mc = self.config.vqvae.model
        # Code histogram per codebook; padded rows add zero.
        k = jnp.broadcast_to(jnp.arange(mc.num_codebooks), codes.shape)
        w = jnp.broadcast_to(mask[:, None, None, None], codes.shape)
        hist = jnp.zeros((mc.num_codebooks, mc.codebook_size)).at[k, codes].add(w)
        return {"psnr": jnp.sum(M.psnr(a, b) * mask), "ssim": jnp.sum(M.ssim(a, b) * mask),
                "mse": jnp.sum(jnp.mean((x_hat - x) ** 2, axis=(1, 2, 3)) * mask),
                "count": jnp.sum(mask), "code_hist": hist}

    def summarize_eval(self, sums: dict) -> dict:
        n = max(float(sums["count"]), 1.0)
        hist = np.asarray(sums["code_hist"])
        p = hist / np.maximum(hist.sum(-1, keepdims=True), 1)
        perplexity = np.exp(-np.sum(np.where(p > 0, p * np.log(np.maximum(p, 1e-12)), 0), -1))
        return {"psnr": float(sums["psnr"]) / n, "ssim": float(sums["ssim"]) / n,
                "recon_mse": float(sums["mse"]) / n, "num_frames": int(n),
                "codebook_usage": (hist > 0).mean(-1).tolist(),
                "codebook_perplexity": perplexity.tolist()}

    def make_iterator(self, split: str, mesh, *, train: bool):
        from lvt_jax.data import pipeline  # data deps load only when data is needed
        cfg = self.train_cfg
        batch = int(cfg.batch_size if train else cfg.get("eval_batch_size", cfg.batch_size))
        sharding = shd.batch_sharding(mesh, 4, shd.rules_from_config(self.config))
        return pipeline.make_iterator(
            self.config.data, split, "frames", batch, sharding, seed=int(self.config.seed),
            train=train, frames_per_video=int(cfg.get("frames_per_video_sample", 0)),
            eval_frames_per_video=int(cfg.get("eval_frames_per_video", 0)))

    def images(self, state: TrainState, batch: dict) -> dict[str, list[jax.Array]]:
        def rows(state, images):
            _, x_hat, _ = self.reconstruct(state, images)
            rec = jnp.round(jnp.clip((x_hat + 1.0) * 127.5, 0, 255)).astype(jnp.uint8)
            return [images[:8], rec[:8]]
        return {"vqvae/originals_vs_reconstructions": jax.jit(rows)(state, batch["image"])}
