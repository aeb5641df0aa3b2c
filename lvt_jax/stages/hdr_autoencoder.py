"""HDR stage 1 plug-in: the hierarchical disentangled autoencoder trained on clips.

Loss per clip: pixel MSE (frames in [-1, 1]) + (kl_static * KL(static) + kl_dynamic *
KL(dynamic)) / (number of pixel values in the clip): the KL weights are per pixel value,
so they do not change meaning with the clip length or resolution. Latents are sampled
from their posteriors in training; each clip's static latents pool over its first L
frames, L uniform in 1..T (so that they can be inferred from priming frames alone).

Evaluation over the test split: PSNR / SSIM of the reconstructions (posterior means,
static latents pooled over the whole clip), the KL terms in nats per clip, and where the
dataset has ground-truth instance masks: FG-ARI (foreground adjusted Rand index of the
slots' segmentation, per video over all its frames) and the swap test (eval/swap.py),
pairing every clip of a batch with the next one.
"""
from __future__ import annotations

from typing import Any

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lvt_jax import metrics as M
from lvt_jax import sharding as shd
from lvt_jax.data.pipeline import DATASETS_WITH_INSTANCE_MASKS, INSTANCE_MASK
from lvt_jax.eval import ari, swap
from lvt_jax.models.hdr.autoencoder import HDRAutoencoder
from lvt_jax.stages.base import Stage
from lvt_jax.train_state import TrainState

MASK_METRICS = ("auto", "on", "off")


def mask_metrics(config: Any) -> bool:
    """Whether HDR stage 1 computes FG-ARI and the swap test (they need instance masks).

    'auto' (default): where the dataset has masks; 'on': required (an error without
    masks); 'off': never."""
    t = config.hdr.autoencoder.train
    mode = str(t.get("mask_metrics", "auto")).lower()
    mode = {"true": "on", "false": "off"}.get(mode, mode)
    if mode not in MASK_METRICS:
        raise ValueError(f"hdr.autoencoder.train.mask_metrics={t.mask_metrics!r}: choose one "
                         f"of {MASK_METRICS}.")
    has = config.data.name in DATASETS_WITH_INSTANCE_MASKS
    if mode == "on" and not has:
        raise ValueError(
            f"hdr.autoencoder.train.mask_metrics='on' asks for FG-ARI and the swap test, "
            f"which need ground-truth instance masks, but data.name={config.data.name!r} has "
            f"none (datasets with masks: {', '.join(DATASETS_WITH_INSTANCE_MASKS)}); set "
            "--config.hdr.autoencoder.train.mask_metrics=auto (or off).")
    return has and mode != "off"


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    """Adam with linear warm-up and cosine decay, after global-norm clipping (SAVi's)."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, float(cfg.learning_rate), max(int(cfg.warmup_steps), 1),
        max(int(cfg.num_steps), int(cfg.warmup_steps) + 1),
        end_value=float(cfg.learning_rate) * float(cfg.final_lr_fraction))
    return optax.chain(optax.clip_by_global_norm(float(cfg.grad_clip)),
                       optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8))


def alpha_distillation(alphas: jax.Array, attn: jax.Array) -> jax.Array:
    """Cross-entropy (nats per input position) from slot attention's segmentation (no
    gradient) to the renderer's alphas averaged over each input's pixels: it teaches the
    layers to appear where their slots attend, from the first step, so no slot is
    switched off before it has learned to render (the background renders everything
    blurrily long before an object slot renders anything sharply).
    alphas [B, T, S, H, W], attn [B, T, S, h*w]."""
    B, T, S, H, W = alphas.shape
    n = attn.shape[-1]
    h = w = int(round(n ** 0.5))
    pooled = alphas.reshape(B, T, S, h, H // h, w, W // w).mean((4, 6)).reshape(B, T, S, n)
    target = jax.lax.stop_gradient(attn)
    return -jnp.mean(jnp.sum(target * jnp.log(pooled + 1e-6), axis=2))


def clip_data_config(data_cfg: Any, clip_length: int) -> ml_collections.ConfigDict:
    """A copy of the data config whose clips have `clip_length` frames."""
    d = ml_collections.ConfigDict(data_cfg.to_dict())
    d.clip_length = int(clip_length)
    return d


class HDRAutoencoderStage(Stage):
    name = "hdr_autoencoder"
    unit = "frames"
    config_section = "hdr.autoencoder"   # its settings (and init_from) live there

    def __init__(self, config: Any):
        super().__init__(config)
        self.model = HDRAutoencoder(config.hdr.model)
        self.tx = make_optimizer(config.hdr.autoencoder.train)
        d = config.data
        self.image_shape = (int(d.image_size), int(d.image_size), 3)
        t = config.hdr.autoencoder.train
        self.clip_length = int(t.clip_length)
        self.eval_clip_length = int(t.get("eval_clip_length", 0) or d.clip_length)
        self.num_slots = int(config.hdr.model.num_objects) + 1
        self.has_masks = mask_metrics(config)
        self.num_mask_ids = int(config.hdr.autoencoder.get("num_mask_ids", 5))

    @property
    def train_cfg(self):
        return self.config.hdr.autoencoder.train

    def init(self, rng: jax.Array) -> TrainState:
        x = jnp.zeros((1, self.clip_length, *self.image_shape), jnp.float32)
        params = self.model.init(jax.random.wrap_key_data(rng), x)["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), extra={}, rng=rng)

    def _video(self, batch: dict, length: int) -> jax.Array:
        video = batch["video"]
        chex.assert_shape(video, (None, length, *self.image_shape))
        return M.to_model_input(video)

    def loss(self, params, video: jax.Array, rng: jax.Array, kl_scale: jax.Array = 1.0):
        B, T = video.shape[:2]
        r_len, r_z = jax.random.split(rng)
        length = jax.random.randint(r_len, (B,), 1, T + 1)
        recon, aux = self.model.apply({"params": params}, video, rng=r_z, length=length)
        t = self.train_cfg
        mse = jnp.mean((recon - video) ** 2)
        values = float(np.prod(video.shape[1:]))
        kl = (float(t.kl_static) * aux["kl_static"] + float(t.kl_dynamic) * aux["kl_dynamic"])
        masks = alpha_distillation(aux["alphas"], aux["enc"]["attn"])
        loss = mse + kl_scale * jnp.mean(kl) / values + float(t.get("mask_weight", 0.0)) * masks
        psnr = jnp.mean(M.psnr(M.to_unit(recon).reshape(B * T, *self.image_shape),
                               M.to_unit(video).reshape(B * T, *self.image_shape)))
        return loss, {"loss": loss, "recon_mse": mse, "psnr": psnr, "mask_ce": masks,
                      "kl_static": jnp.mean(aux["kl_static"]),
                      "kl_dynamic": jnp.mean(aux["kl_dynamic"])}

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        video = self._video(batch, self.clip_length)
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        warmup = int(self.train_cfg.get("kl_warmup_steps", 0))
        kl_scale = (jnp.minimum(1.0, (state.step + 1) / warmup) if warmup > 0
                    else jnp.float32(1.0))
        (_, metrics), grads = jax.value_and_grad(self.loss, has_aux=True)(
            state.params, video, rng, kl_scale)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    # --- evaluation ----------------------------------------------------------------------
    def reconstruct(self, params, video: jax.Array):
        """(frames, aux) with posterior means, static latents pooled over every frame."""
        return self.model.apply({"params": params}, video)

    def eval_step(self, state: TrainState, batch: dict) -> dict:
        video = self._video(batch, self.eval_clip_length)
        mask = batch["mask"].astype(jnp.float32)
        B, T = video.shape[:2]
        recon, aux = self.reconstruct(state.params, video)
        a = M.to_unit(recon).reshape(B * T, *self.image_shape)
        b = M.to_unit(video).reshape(B * T, *self.image_shape)
        per_clip = lambda x: x.reshape(B, T).mean(1)
        sums = {"psnr": jnp.sum(per_clip(M.psnr(a, b)) * mask),
                "ssim": jnp.sum(per_clip(M.ssim(a, b)) * mask),
                "mse": jnp.sum(jnp.mean((recon - video) ** 2, (1, 2, 3, 4)) * mask),
                "kl_static": jnp.sum(aux["kl_static"] * mask),
                "kl_static_objects": jnp.sum(aux["kl_static_objects"] * mask),
                "kl_static_background": jnp.sum(aux["kl_static_background"] * mask),
                "kl_dynamic": jnp.sum(aux["kl_dynamic"] * mask),
                "count": jnp.sum(mask)}
        if self.has_masks:
            sums.update(self._mask_metrics(state.params, video, recon, aux, batch, mask))
        return sums

    def _mask_metrics(self, params, video, recon, aux, batch, mask) -> dict:
        gt = batch[INSTANCE_MASK].astype(jnp.int32)
        segments = jnp.argmax(aux["alphas"], axis=2)                  # [B, T, H, W]
        fg = ari.fg_ari(gt, segments, self.num_mask_ids, self.num_slots)
        # Swap test: clip i (A) takes the static latents of clip i+1 (B).
        perm = jnp.roll(jnp.arange(video.shape[0]), -1)
        slot, gid, iou = swap.match_objects(segments, gt, self.num_slots, self.num_mask_ids)
        post, enc = aux["post"], aux["enc"]
        obj = post["obj_mu"]
        k = jnp.arange(obj.shape[1])[None, :] == (slot - 1)[:, None]      # [B, K]
        swapped_obj = jnp.where(k[..., None], obj[perm][jnp.arange(obj.shape[0]), slot[perm] - 1][:, None], obj)
        decode = lambda o, g: self.model.apply({"params": params}, o, g, enc["dyn_mu"],
                                               method="decode")
        frames_o, _, alphas_o = decode(swapped_obj, post["bg_mu"])
        frames_b, _, _ = decode(obj, post["bg_mu"][perm])
        real = M.to_unit(video)
        valid = (iou > 0.0) & (iou[perm] > 0.0) & (mask > 0) & (mask[perm] > 0)
        o = swap.object_swap(M.to_unit(frames_o), jnp.argmax(alphas_o, 2), real, real[perm],
                             gt, gt[perm], slot, gid, gid[perm], valid)
        bg_ok = swap.background_swap(M.to_unit(frames_b), real, real[perm], gt, gt[perm])
        bg_valid = ((mask > 0) & (mask[perm] > 0)).astype(jnp.float32)
        return {"fg_ari": jnp.sum(fg * mask), "swap_pairs": jnp.sum(o["pairs"]),
                "swap_appearance": jnp.sum(o["appearance"]),
                "swap_motion_iou": jnp.sum(o["motion_iou"]), "swap_score": jnp.sum(o["score"]),
                "swap_background": jnp.sum(bg_ok * bg_valid), "swap_bg_pairs": jnp.sum(bg_valid)}

    def summarize_eval(self, sums: dict) -> dict:
        n = max(float(sums["count"]), 1.0)
        out = {"psnr": float(sums["psnr"]) / n, "ssim": float(sums["ssim"]) / n,
               "recon_mse": float(sums["mse"]) / n, "num_clips": int(n),
               "clip_length": self.eval_clip_length}
        for k in ("kl_static", "kl_static_objects", "kl_static_background", "kl_dynamic"):
            out[f"{k}_nats"] = float(sums[k]) / n
        if "fg_ari" in sums:
            pairs = max(float(sums["swap_pairs"]), 1.0)
            out.update(fg_ari=float(sums["fg_ari"]) / n,
                       swap_score=float(sums["swap_score"]) / pairs,
                       swap_appearance=float(sums["swap_appearance"]) / pairs,
                       swap_motion_iou=float(sums["swap_motion_iou"]) / pairs,
                       swap_pairs=int(sums["swap_pairs"]),
                       swap_background=float(sums["swap_background"]) /
                       max(float(sums["swap_bg_pairs"]), 1.0))
        return out

    def make_iterator(self, split: str, mesh, *, train: bool):
        from lvt_jax.data import pipeline
        cfg = self.train_cfg
        batch = int(cfg.batch_size if train else cfg.get("eval_batch_size", cfg.batch_size))
        length = self.clip_length if train else self.eval_clip_length
        features = ("video", INSTANCE_MASK) if (self.has_masks and not train) else ("video",)
        sharding = shd.batch_sharding(mesh, 5, shd.rules_from_config(self.config))
        return pipeline.make_iterator(
            clip_data_config(self.config.data, length), split, "clips", batch, sharding,
            seed=int(self.config.seed), train=train, features=features)

    def items_per_step(self, batch: dict) -> int:
        return int(self.train_cfg.batch_size) * self.clip_length

    def images(self, state: TrainState, batch: dict) -> dict[str, list[jax.Array]]:
        """One test clip: real frames, reconstruction, then per slot its layer (RGB over
        white, weighted by its alpha) and its alpha (grey)."""
        def rows(params, video):
            v = self._video({"video": video[:1]}, video.shape[1])
            recon, aux = self.reconstruct(params, v)
            to8 = lambda x: jnp.round(jnp.clip(x, 0, 1) * 255).astype(jnp.uint8)
            out = [video[0], to8(M.to_unit(recon[0]))]
            rgb, alpha = M.to_unit(aux["rgb"][0]), aux["alphas"][0][..., None]  # [T,S,...]
            for s in range(self.num_slots):
                out.append(to8(alpha[:, s] * rgb[:, s] + (1 - alpha[:, s])))
                out.append(to8(jnp.broadcast_to(alpha[:, s], rgb[:, s].shape)))
            return out
        return {f"{self.name}/decomposition": jax.jit(rows)(state.params, batch["video"])}
