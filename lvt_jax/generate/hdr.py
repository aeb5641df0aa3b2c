"""HDR's two trained stages, loaded once: video continuation and its layers.

Sampling a video: stage 1 encodes the n_prime priming frames (slots tracked from the
first one) into the static latents pooled over them and their time-varying latents; the
latent predictor rolls the time-varying latents forward (lax.scan with a key/value
cache, lvt_jax/sampling/hdr.py); stage 1's renderer decodes every frame from the static
latents and the time-varying ones. Priming frames come out as their reconstructions, as
in LVT. The whole chain is one compiled program per (config, batch, n_prime, sampler).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lvt_jax import metrics as M
from lvt_jax import sharding as shd
from lvt_jax.models.hdr import latents as lat
from lvt_jax.generate.base import BatchedGenerator, to_uint8
from lvt_jax.models.hdr.autoencoder import POSITION_DIMS, HDRAutoencoder
from lvt_jax.sampling import hdr as sampler_lib

log = logging.getLogger(__name__)


def freeze_moving_slot(dyn: jax.Array, n_prime: int) -> tuple[jax.Array, jax.Array]:
    """Freezes, per video, the object slot whose position moves most after the priming
    frames: its time-varying latents stay those of the last priming frame.
    dyn [B, T, S, Dd] -> (frozen dyn, slot [B])."""
    pos = dyn[:, n_prime - 1:, 1:, :POSITION_DIMS]
    travel = jnp.sum(jnp.linalg.norm(jnp.diff(pos, axis=1), axis=-1), axis=1)   # [B, K]
    slot = jnp.argmax(travel, -1) + 1
    still = jnp.broadcast_to(dyn[:, n_prime - 1:n_prime], dyn.shape)
    t = jnp.arange(dyn.shape[1])[None, :, None, None] >= n_prime
    s = jnp.arange(dyn.shape[2])[None, None, :, None] == slot[:, None, None, None]
    return jnp.where(t & s, still, dyn), slot


class HDRGenerator(BatchedGenerator):
    """HDR stage 1 (autoencoder) and stage 2 (latent predictor) ready to sample."""

    system = "hdr"
    conditional = False

    def __init__(self, config: Any, autoencoder_params: Any, predictor_params: Any,
                 mesh: Mesh, *, sampler: Optional[str] = None):
        from lvt_jax.stages.hdr_predictor import build_model
        super().__init__(config, mesh)
        self.num_frames = int(config.data.clip_length)
        if not 0 < self.n_prime < self.num_frames:
            raise ValueError(f"sample.n_prime={self.n_prime}: HDR needs 1 <= n_prime < "
                             f"{self.num_frames} (data.clip_length).")
        self.sampler = sampler or str(config.sample.sampler)
        if self.sampler not in sampler_lib.SAMPLERS:
            raise ValueError(f"sample.sampler={self.sampler!r}: choose one of "
                             f"{sampler_lib.SAMPLERS}.")
        self.autoencoder = HDRAutoencoder(config.hdr.model)
        self.predictor = build_model(config)
        self.ae_params = jax.device_put(autoencoder_params, NamedSharding(mesh, P()))
        self.params = predictor_params
        self.layout = lat.layout(config.hdr.model)
        ae, pred, n_prime, T = self.autoencoder, self.predictor, self.n_prime, self.num_frames
        rollout = sampler_lib.compiled_sampler(pred, T, self.sampler)

        def prime(ae_params, frames):
            """Priming frames -> static latents pooled over them, their dynamic latents
            and stage 2's conditioning vector."""
            B, n = frames.shape[:2]
            enc = ae.apply({"params": ae_params}, M.to_model_input(frames), method="encode")
            post = ae.apply({"params": ae_params}, enc, jnp.full((B,), n, jnp.int32),
                            method="static_posterior")
            cond = lat.conditioning(enc["obj_mu"],
                                            lat.background_summary(enc))
            return post["obj_mu"], post["bg_mu"], enc["dyn_mu"], cond

        def decode(ae_params, obj, bg, dyn):
            frames, rgb, alphas = ae.apply({"params": ae_params}, obj, bg, dyn, method="decode")
            return to_uint8(frames), rgb, alphas

        def sample_chunk(ae_params, pred_params, frames, keys, ctl):
            obj, bg, dyn_prime, cond = prime(ae_params, frames[:, :n_prime])
            dyn = rollout(pred_params, dyn_prime, cond, keys, ctl)
            return decode(ae_params, obj, bg, dyn)[0], dyn, obj, bg

        self._sample_chunk = jax.jit(sample_chunk)
        self._decode = jax.jit(decode)
        self._encode = jax.jit(lambda p, v: prime(p, v)[:3])
        self._reconstruct = jax.jit(lambda p, v: to_uint8(ae.apply(
            {"params": p}, M.to_model_input(v))[0]))

    @classmethod
    def from_workdir(cls, config: Any, workdir: str, mesh: Mesh, **kw) -> "HDRGenerator":
        """Restores the latest HDR stage-1 and stage-2 checkpoints of `workdir`."""
        from lvt_jax import trainer
        from lvt_jax.stages.hdr_autoencoder import HDRAutoencoderStage
        from lvt_jax.stages.hdr_predictor import HDRPredictorStage
        ae, ae_step = trainer.restore_state(HDRAutoencoderStage(config), mesh, workdir)
        pr, pr_step = trainer.restore_state(HDRPredictorStage(config), mesh, workdir)
        log.info("generator: HDR stage 1 at step %d, stage 2 at step %d", ae_step, pr_step)
        gen = cls(config, ae.params, pr.params, mesh, **kw)
        gen.steps = {"hdr_autoencoder": int(ae_step), "hdr_predictor": int(pr_step)}
        return gen

    def _run(self, fn, *host_args: np.ndarray, n: int, extra=()) -> list:
        """fn(*extra_before, *chunked host args) per chunk of batch_size videos; the
        outputs (a tuple) fetched and cut back to n rows."""
        from lvt_jax import trainer
        outs = []
        with trainer.mesh_context(self.mesh, self.rules):
            for start, stop in self._chunks(n):
                args = [self._global(self._padded(a, start, stop)) for a in host_args]
                res = shd.fetch(fn(*extra, *args))
                outs.append([r[:stop - start] for r in res])
        return [np.concatenate(parts) for parts in zip(*outs)]

    def generate(self, prime_frames: np.ndarray, key: jax.Array, *, first_index: int = 0,
                 stage2_params: Any = None, labels: Optional[np.ndarray] = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """uint8 priming frames [B, >= n_prime, H, W, 3] -> (uint8 videos [B, T, H, W, 3],
        {'dynamic' [B, T, S, Dd], 'static' [B, K, Ds], 'background' [B, h, w, Cb]}).

        Video i draws with key `fold_in(key, first_index + i)`: the same video gets the
        same sample whatever the batch or the number of devices."""
        del labels  # HDR has no class conditioning
        frames = self._check_frames(prime_frames)
        if frames.shape[1] < self.n_prime:
            raise ValueError(f"{frames.shape[1]} priming frames given, sample.n_prime="
                             f"{self.n_prime} needed")
        frames = frames[:, :self.n_prime]
        params = self.params if stage2_params is None else stage2_params
        from lvt_jax import trainer
        outs = []
        with trainer.mesh_context(self.mesh, self.rules):
            for start, stop in self._chunks(len(frames)):
                idx = np.arange(first_index + start, first_index + start + self.batch_size)
                res = self._sample_chunk(self.ae_params, params,
                                         self._global(self._padded(frames, start, stop)),
                                         self._global_keys(key, idx), self.controls)
                outs.append([r[:stop - start] for r in shd.fetch(res)])
                if self.progress is not None:
                    self.progress(0)   # one unit per batch (the roll-out is one program)
                    next_batch = getattr(self.progress, "next_batch", None)
                    if next_batch is not None:
                        next_batch()
        videos, dyn, obj, bg = (np.concatenate(p) for p in zip(*outs))
        return videos, {"dynamic": dyn, "static": obj, "background": bg}

    def sample(self, prime_frames: np.ndarray, key: jax.Array, *, stage2_params: Any = None,
               transformer_params: Any = None, first_index: int = 0,
               labels: Optional[np.ndarray] = None) -> np.ndarray:
        """uint8 priming frames -> uint8 videos [B, num_frames, H, W, 3] (evaluation's API;
        `transformer_params` is accepted as another name of the stage-2 parameters)."""
        params = stage2_params if stage2_params is not None else transformer_params
        return self.generate(prime_frames, key, first_index=first_index,
                             stage2_params=params)[0]

    def reconstruct(self, frames: np.ndarray) -> np.ndarray:
        """Stage 1's reconstruction of whole clips (static latents pooled over all their
        frames): uint8 [B, T, H, W, 3]."""
        frames = self._check_frames(frames)
        return self._run(lambda v: (self._reconstruct(self.ae_params, v),), frames,
                         n=len(frames))[0]

    def encode(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """A real video's latents, what `render` takes back: uint8 [B, T, H, W, 3] ->
        {'static' [B, K, Ds] and 'background' [B, h, w, Cb] pooled over all T frames,
        'dynamic' [B, T, S, Dd]} (the priming step of sampling, over every frame)."""
        frames = self._check_frames(frames)
        obj, bg, dyn = self._run(lambda v: self._encode(self.ae_params, v), frames,
                                 n=len(frames))
        return {"static": obj, "background": bg, "dynamic": dyn}

    def render(self, static: np.ndarray, background: np.ndarray, dynamic: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Latents -> (uint8 frames [B, T, H, W, 3], layers rgb [B, T, S, H, W, 3] in
        [-1, 1], alphas [B, T, S, H, W])."""
        return self._run(lambda o, b, d: self._decode(self.ae_params, o, b, d),
                         static, background, dynamic, n=len(static))

    def slices_per_clip(self) -> int:
        """Progress unit of `generate`: one per batch (the roll-out is one program)."""
        return 1
