"""LVT's two trained stages, loaded once: frames <-> codes, and video continuation.

`Generator` is what sampling (`--mode=sample`), evaluation (`--mode=evaluate`) and the
in-loop FVD of stage-2 training use for LVT (batching and sharding: generate/base.py).
"""
from __future__ import annotations

import logging
from typing import Any, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lvt_jax import sharding as shd
from lvt_jax.generate.base import BatchedGenerator, to_uint8
from lvt_jax.metrics import to_model_input
from lvt_jax.models.lvt.transformer import build_model
from lvt_jax.models.lvt.vqvae import VQVAE
from lvt_jax.sampling import controls as ctl_lib
from lvt_jax.sampling.lvt import sampler as sampler_lib

log = logging.getLogger(__name__)


class Generator(BatchedGenerator):
    """Stage 1 (VQ-VAE) and stage 2 (transformer) ready to encode, decode and sample."""

    system = "lvt"

    def __init__(self, config: Any, vqvae_variables: Any, transformer_params: Any, mesh: Mesh,
                 *, sampler: Optional[str] = None):
        super().__init__(config, mesh)
        m = config.transformer.model
        self.clip_shape = tuple(m.clip_shape)
        self.num_frames = self.clip_shape[0]
        self.sampler = sampler or str(config.sample.sampler)
        if self.sampler not in sampler_lib.SAMPLERS:
            raise ValueError(f"sample.sampler={self.sampler!r}: choose one of "
                             f"{sampler_lib.SAMPLERS}.")
        sampler_lib.first_slice(self.clip_shape, tuple(m.stride), self.n_prime)  # checks n_prime
        self.vqvae = VQVAE(config.vqvae.model)
        self.transformer = build_model(m)
        self.vqvae_variables = jax.device_put(vqvae_variables, NamedSharding(mesh, P()))
        self.params = transformer_params

        def encode(variables, frames):  # [N, H, W, 3] uint8 -> [N, h, w, nc]
            return self.vqvae.apply(variables, to_model_input(frames), method="encode")

        def decode(variables, codes):
            return to_uint8(self.vqvae.apply(variables, codes, method="decode"))

        self._encode = jax.jit(encode)
        self._decode = jax.jit(decode)
        self._sample_fns: dict = {}

    @classmethod
    def from_workdir(cls, config: Any, workdir: str, mesh: Mesh, **kw) -> "Generator":
        """Restores the latest stage-1 and stage-2 checkpoints of `workdir`."""
        from lvt_jax import trainer
        from lvt_jax.stages.transformer import TransformerStage
        from lvt_jax.stages.vqvae import VQVAEStage
        vq, vq_step = trainer.restore_state(VQVAEStage(config), mesh, workdir)
        tr, tr_step = trainer.restore_state(TransformerStage(config), mesh, workdir)
        log.info("generator: stage 1 at step %d, stage 2 at step %d", vq_step, tr_step)
        gen = cls(config, {"params": vq.params, **vq.extra}, tr.params, mesh, **kw)
        gen.steps = {"vqvae": int(vq_step), "transformer": int(tr_step)}
        return gen

    # --- frames <-> codes ---------------------------------------------------------------
    def _frames_op(self, fn, variables, x: np.ndarray) -> np.ndarray:
        """Applies a per-frame op to [N, T, ...] in chunks of batch_size videos."""
        x = np.asarray(x)
        N, T = x.shape[:2]
        if N == 0:
            raise ValueError("no videos given")
        out = []
        for start, stop in self._chunks(N):
            part = self._padded(x, start, stop)
            flat = part.reshape(self.batch_size * T, *part.shape[2:])
            y = shd.fetch(fn(variables, self._global(flat)))
            out.append(y.reshape(self.batch_size, T, *y.shape[1:])[:stop - start])
        return np.concatenate(out)

    def encode(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [B, T, H, W, 3] -> int32 codes [B, T, h, w, nc]."""
        frames = self._check_frames(frames)
        return self._frames_op(self._encode, self.vqvae_variables, frames).astype(np.int32)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes [B, T, h, w, nc] -> uint8 frames [B, T, H, W, 3]."""
        return self._frames_op(self._decode, self.vqvae_variables, np.asarray(codes, np.int32))

    def reconstruct(self, frames: np.ndarray) -> np.ndarray:
        return self.decode(self.encode(frames))

    # --- sampling -----------------------------------------------------------------------
    def _sample_fn(self):
        key = (self.sampler, self.n_prime)
        if key not in self._sample_fns:
            model, n_prime, sampler = self.transformer, self.n_prime, self.sampler

            def progress(s):
                if self.progress is not None:
                    self.progress(int(s))

            def fn(params, codes, keys, ctl, labels):
                return sampler_lib.sample_codes(model, params, codes, keys, ctl,
                                                n_prime=n_prime, sampler=sampler,
                                                labels=labels, progress=progress)
            self._sample_fns[key] = jax.jit(fn)
        return self._sample_fns[key]

    def sample_codes(self, prime_codes: np.ndarray, key: jax.Array, *,
                     transformer_params: Any = None, first_index: int = 0,
                     controls: Optional[ctl_lib.Controls] = None,
                     labels: Optional[np.ndarray] = None) -> np.ndarray:
        """Priming codes [B, n, h, w, nc] (n >= n_prime) -> whole clips [B, T, h, w, nc].

        Video i draws with key `fold_in(key, first_index + i)`: the same video gets the
        same sample whatever the batch or the number of devices. `labels` (int [B]): class
        ids, required by a class-conditional model and ignored otherwise.
        """
        from lvt_jax import trainer
        prime_codes = np.asarray(prime_codes, np.int32)
        B, n = prime_codes.shape[:2]
        if n < self.n_prime:
            raise ValueError(f"{n} priming frames given, sample.n_prime={self.n_prime} needed")
        c = self.config.transformer.model
        clip = np.zeros((B, *self.clip_shape, c.num_codebooks), np.int32)
        clip[:, :self.n_prime] = prime_codes[:, :self.n_prime]
        params = self.params if transformer_params is None else transformer_params
        ctl = self.controls if controls is None else controls
        fn = self._sample_fn()
        if not self.conditional:
            labels = None
        elif labels is None:
            raise ValueError(f"stage 2 is class-conditional (transformer.model.num_classes="
                             f"{self.config.transformer.model.num_classes}): pass each video's "
                             "class id (--config.sample.label=K for a video of your own).")
        else:
            labels = np.asarray(labels, np.int32).reshape(B)
        out = []
        with trainer.mesh_context(self.mesh, self.rules):
            for start, stop in self._chunks(B):
                idx = np.arange(first_index + start, first_index + start + self.batch_size)
                keys = self._global_keys(key, idx)
                lab = None if labels is None else self._global(self._padded(labels, start, stop))
                codes = fn(params, self._global(self._padded(clip, start, stop)), keys, ctl, lab)
                out.append(shd.fetch(codes)[:stop - start])
        return np.concatenate(out)

    @property
    def conditional(self) -> bool:
        return int(self.config.transformer.model.get("num_classes", 0) or 0) > 0

    def generate(self, prime_frames: np.ndarray, key: jax.Array, *, first_index: int = 0,
                 labels: Optional[np.ndarray] = None
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """uint8 priming frames [B, >= n_prime, H, W, 3] -> (uint8 videos [B, T, H, W, 3],
        {'codes': int16 [B, T, h, w, nc]}), batch by batch (progress per slice)."""
        prime = self.encode(self._check_frames(prime_frames)[:, :self.n_prime])
        codes = []
        for start, stop in self._chunks(len(prime)):
            codes.append(self.sample_codes(
                prime[start:stop], key, first_index=first_index + start,
                labels=None if labels is None else labels[start:stop]))
            next_batch = getattr(self.progress, "next_batch", None)
            if next_batch is not None:
                next_batch()
        codes = np.concatenate(codes)
        return self.decode(codes), {"codes": codes.astype(np.int16)}

    def sample(self, prime_frames: np.ndarray, key: jax.Array, *, transformer_params: Any = None,
               stage2_params: Any = None, first_index: int = 0,
               labels: Optional[np.ndarray] = None) -> np.ndarray:
        """uint8 priming frames [B, n_prime, H, W, 3] -> uint8 videos [B, num_frames, ...].

        Every output frame is decoded from codes: frames < n_prime are the stage-1
        reconstructions of the priming frames. `stage2_params` (or `transformer_params`)
        replaces the loaded transformer's parameters (the in-loop FVD's live ones).
        """
        prime = self.encode(np.asarray(prime_frames)[:, :self.n_prime])
        params = stage2_params if stage2_params is not None else transformer_params
        codes = self.sample_codes(prime, key, transformer_params=params,
                                  first_index=first_index, labels=labels)
        return self.decode(codes)

    def slices_per_clip(self) -> int:
        """Number of slices one clip generates (the progress bar's unit)."""
        m = self.config.transformer.model
        from lvt_jax.models.lvt import subscale
        return subscale.num_slices(m.stride) - sampler_lib.first_slice(
            self.clip_shape, tuple(m.stride), self.n_prime)

