"""HDR stage 2 plug-in: the latent predictor trained on stage-1 latents (teacher forcing).

Batches are windows of `data.clip_length` frames of every video's stored latents
(WORKDIR/hdr_latents/, written by --mode=encode). The predictor is conditioned on the
static latents of the window's first n_prime frames (pooled as sampling pools the
priming frames) and predicts every later frame's time-varying latents. Loss: the negative
ELBO per predicted frame, nll + kl_weight * KL(q || p) in nats (models/hdr/predictor.py).
Test-split evaluation reports `elbo_nats_per_frame` (kl weight 1), `nll_nats_per_frame`
and `kl_nats_per_frame`.
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from lvt_jax import fileio
from lvt_jax import sharding as shd
from lvt_jax.models.hdr import latents as lat
from lvt_jax.models.hdr.predictor import LatentPredictor, elbo_terms, init_params
from lvt_jax.stages.base import Stage
from lvt_jax.train_state import TrainState

LATENTS_DIR = "hdr_latents"   # WORKDIR/hdr_latents/<split>: written by --mode=encode


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, float(cfg.learning_rate), max(int(cfg.warmup_steps), 1),
        max(int(cfg.num_steps), int(cfg.warmup_steps) + 1),
        end_value=float(cfg.learning_rate) * float(cfg.final_lr_fraction))
    return optax.chain(optax.clip_by_global_norm(float(cfg.grad_clip)), optax.adam(schedule))


def build_model(config: Any) -> LatentPredictor:
    m = config.hdr.model
    return LatentPredictor(config.hdr.predictor.model, int(m.num_objects) + 1,
                           int(m.dynamic_dim))


def split_batch(latents: jax.Array, layout: dict, n_prime: int) -> tuple[jax.Array, jax.Array]:
    """Stored latents [B, T, 1, 1, F] -> (dynamic [B, T, S, Dd], conditioning [B, C] from
    the first n_prime frames)."""
    parts = lat.split_features(latents[:, :, 0, 0].astype(jnp.float32), layout)
    return parts["dynamic"], lat.conditioning(parts["static"][:, :n_prime],
                                                      parts["background"][:, :n_prime])


class HDRPredictorStage(Stage):
    name = "hdr_predictor"
    unit = "frames"
    config_section = "hdr.predictor"   # its settings (and init_from) live there

    def __init__(self, config: Any, workdir: str | None = None):
        super().__init__(config)
        self.workdir = workdir
        self.model = build_model(config)
        self.tx = make_optimizer(config.hdr.predictor.train)
        self.layout = lat.layout(config.hdr.model)
        self.num_frames = int(config.data.clip_length)
        self.n_prime = int(config.hdr.predictor.train.n_prime)
        lay = self.layout
        self.cond_dim = int(lay["static"][0] * lay["static"][1] + lay["background"][0])

    @property
    def train_cfg(self):
        return self.config.hdr.predictor.train

    def init(self, rng: jax.Array) -> TrainState:
        params = init_params(self.model, jax.random.wrap_key_data(rng), self.num_frames,
                             self.cond_dim)
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), extra={}, rng=rng)

    def _inputs(self, batch: dict) -> tuple[jax.Array, jax.Array]:
        stored = batch["latents"]
        chex.assert_shape(stored, (None, self.num_frames, 1, 1, lat.num_features(self.layout)))
        return split_batch(stored, self.layout, self.n_prime)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        dyn, cond = self._inputs(batch)
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        beta = float(self.train_cfg.kl_weight)

        def loss_fn(params):
            t = elbo_terms(self.model, params, dyn, cond, rng, self.n_prime)
            nll, kl = jnp.mean(t["nll"]), jnp.mean(t["kl"])
            loss = nll + beta * kl
            return loss, {"loss": loss, "nll_nats_per_frame": nll, "kl_nats_per_frame": kl}

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(self, state: TrainState, batch: dict) -> dict:
        dyn, cond = self._inputs(batch)
        mask = batch["mask"].astype(jnp.float32)
        # A fixed key: the test ELBO is a function of the parameters alone.
        t = elbo_terms(self.model, state.params, dyn, cond, jax.random.key(0), self.n_prime)
        return {"nll": jnp.sum(t["nll"] * mask), "kl": jnp.sum(t["kl"] * mask),
                "clips": jnp.sum(mask)}

    def summarize_eval(self, sums: dict) -> dict:
        n = max(float(sums["clips"]), 1.0)
        nll, kl = float(sums["nll"]) / n, float(sums["kl"]) / n
        return {"elbo_nats_per_frame": nll + kl, "nll_nats_per_frame": nll,
                "kl_nats_per_frame": kl, "num_clips": int(n),
                "predicted_frames_per_clip": self.num_frames - self.n_prime}

    def latents_dir(self, split: str) -> str:
        if self.workdir is None:
            raise ValueError("HDRPredictorStage needs the workdir holding hdr_latents/ to "
                             "read data: construct it as HDRPredictorStage(config, workdir).")
        return fileio.join(self.workdir, LATENTS_DIR, split)

    def make_iterator(self, split: str, mesh, *, train: bool):
        from lvt_jax.data import codes as codes_lib
        cfg = self.train_cfg
        batch = int(cfg.batch_size if train else cfg.get("eval_batch_size", cfg.batch_size))
        directory = self.latents_dir(split)
        if not fileio.isdir(directory):
            raise FileNotFoundError(
                f"HDR stage 2 trains on stage-1 latents, but {directory} does not exist; run "
                "--mode=encode with the same --config and --workdir first (after "
                "--mode=train_hdr_autoencoder).")
        sharding = shd.batch_sharding(mesh, 5, shd.rules_from_config(self.config))
        return codes_lib.make_code_iterator(
            directory, self.num_frames, batch, sharding, seed=int(self.config.seed),
            train=train, data_cfg=self.config.data, key="latents",
            formats=(codes_lib.LATENTS_FORMAT,))

    def items_per_step(self, batch: dict) -> int:
        return int(self.train_cfg.batch_size) * (self.num_frames - self.n_prime)
