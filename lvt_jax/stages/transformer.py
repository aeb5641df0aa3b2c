"""Stage 2 plug-in: the latent Video Transformer trained on clips of stage-1 codes.

Training objective (specification, "Training objective and optimiser"): one random slice
per clip per step, teacher-forced; cross-entropy averaged over the codebooks and over the
counted positions, reported in nats (`loss`) and bits (`bits_per_code`). Positions of the
n_prime priming frames are never counted: they are given at sampling time, not generated.

Which slices are drawn: every slice that holds at least one non-priming position, each
equally likely. For DSFVT (stride (16, 1, 1): a slice is a frame) that is exactly the
release's uniform draw from [n_prime, 15]; for DSTSVT (stride (4, 2, 2)) with n_prime = 1
every slice qualifies (each spans 4 frames) and the positions of frame 0 are masked out
of the loss. (Drawing a slice that is all priming would add a step with nothing to learn.)
"""
from __future__ import annotations

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lvt_jax import fileio
from lvt_jax import sharding as shd
from lvt_jax.models.lvt import subscale
from lvt_jax.models.lvt.transformer import build_model
from lvt_jax.stages.base import Stage
from lvt_jax.train_state import TrainState

LN2 = math.log(2.0)


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    """PyTorch's RMSprop (eps added outside the square root), constant rate, as released."""
    return optax.rmsprop(cfg.learning_rate, decay=cfg.decay, eps=cfg.eps,
                         momentum=cfg.momentum, eps_in_sqrt=False)


def trainable_slices(clip_shape: tuple, stride: tuple, n_prime: int) -> np.ndarray:
    """Slice numbers that hold at least one position of a non-priming frame (t >= n_prime).

    Static (numpy): the training step draws uniformly from these.
    """
    T = clip_shape[0]
    st = stride[0]
    n = subscale.num_slices(stride)
    a, _, _ = subscale.slice_offsets(np.arange(n), stride)
    last_frame = a + (T // st - 1) * st  # the latest frame a slice with time offset a holds
    out = np.flatnonzero(last_frame >= n_prime).astype(np.int32)
    if out.size == 0:
        raise ValueError(f"n_prime={n_prime} leaves no frame to learn in clips of {T} frames; "
                         f"use n_prime < {T}.")
    return out


def frame_weights(slice_idx: jax.Array, clip_shape: tuple, stride: tuple,
                  n_prime: int) -> jax.Array:
    """float32 [B, t, 1, 1]: 1 where the slice position's frame is not a priming frame."""
    st = stride[0]
    t = clip_shape[0] // st
    a, _, _ = subscale.slice_offsets(slice_idx, stride)
    frame = a[:, None] + st * jnp.arange(t)[None, :]
    return (frame >= n_prime).astype(jnp.float32)[:, :, None, None]


def code_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Cross-entropy (nats) per position averaged over the codebooks: [..., nc, nv] -> [...]."""
    chex.assert_equal_shape_prefix([logits, targets], targets.ndim)
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean(-1)


def _cond(labels: jax.Array | None) -> dict:
    """Keyword arguments of a model call: labels only for a class-conditional model."""
    return {} if labels is None else {"labels": labels}


class TransformerStage(Stage):
    """LVT stage 2: params = the LatentVideoTransformer tree, extra = {} (no EMA state)."""
    name = "transformer"
    unit = "positions"

    def __init__(self, config: Any, workdir: str | None = None):
        """`workdir`: where the codes are (WORKDIR/codes, or config.transformer.codes_dir);
        only needed for make_iterator (not for init, steps or weight import)."""
        super().__init__(config)
        self.workdir = workdir
        self.model = build_model(config.transformer.model)
        self.tx = make_optimizer(config.transformer.train)
        m = config.transformer.model
        self.clip_shape = tuple(m.clip_shape)
        self.stride = tuple(m.stride)
        self.num_codebooks = int(m.num_codebooks)
        self.n_prime = int(config.transformer.train.n_prime)
        self.slices = trainable_slices(self.clip_shape, self.stride, self.n_prime)
        self.slice_shape = subscale.slice_shape(self.clip_shape, self.stride)
        self.num_classes = int(m.get("num_classes", 0))  # > 0: batches carry 'label'

    @property
    def train_cfg(self):
        return self.config.transformer.train

    def _clip(self, batch: dict) -> jax.Array:
        codes = batch["codes"]
        chex.assert_shape(codes, (None, *self.clip_shape, self.num_codebooks))
        return codes.astype(jnp.int32)

    def _labels(self, batch: dict) -> jax.Array | None:
        """Class ids int32 [B] for a class-conditional model, else None."""
        if self.num_classes <= 0:
            return None
        return batch["label"].astype(jnp.int32)

    def init(self, rng: jax.Array) -> TrainState:
        codes = jnp.zeros((1, *self.clip_shape, self.num_codebooks), jnp.int32)
        labels = jnp.zeros((1,), jnp.int32) if self.num_classes > 0 else None
        variables = self.model.init(jax.random.wrap_key_data(rng), codes,
                                    jnp.zeros((1,), jnp.int32), **_cond(labels))
        params = variables["params"]
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          opt_state=self.tx.init(params), extra={}, rng=rng)

    def sample_slices(self, rng: jax.Array, batch_size: int) -> jax.Array:
        """int32 [B]: one slice per clip, uniform over the trainable slices."""
        pick = jax.random.randint(rng, (batch_size,), 0, len(self.slices))
        return jnp.asarray(self.slices)[pick]

    def slice_loss(self, params: Any, codes: jax.Array, slice_idx: jax.Array,
                   labels: jax.Array | None = None):
        """Mean cross-entropy (nats per code) over the counted positions of the slices."""
        logits = self.model.apply({"params": params}, codes, slice_idx, **_cond(labels))
        targets = subscale.get_slice(codes, self.stride, slice_idx)
        nll = code_nll(logits, targets)  # [B, t, h, w]
        w = jnp.broadcast_to(frame_weights(slice_idx, self.clip_shape, self.stride,
                                           self.n_prime), nll.shape)
        loss = jnp.sum(nll * w) / jnp.maximum(jnp.sum(w), 1.0)
        return loss, {"loss": loss, "bits_per_code": loss / LN2}

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        codes = self._clip(batch)
        rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        slice_idx = self.sample_slices(rng, codes.shape[0])
        grad_fn = jax.value_and_grad(self.slice_loss, has_aux=True)
        (_, metrics), grads = grad_fn(state.params, codes, slice_idx, self._labels(batch))
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics["grad_norm"] = optax.tree.norm(grads)
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    def eval_step(self, state: TrainState, batch: dict) -> dict:
        """Summed nats and counted positions over whole clips, every slice teacher-forced.

        Priming frames are excluded exactly as in training: slices that are all priming
        are skipped, and positions of frames t < n_prime carry weight 0. So test bits per
        code is the model's cost of coding the generated frames given the priming ones.
        Slices are evaluated one after another (lax.map), so memory stays that of one
        slice per clip.
        """
        codes = self._clip(batch)
        labels = self._labels(batch)
        mask = batch["mask"].astype(jnp.float32)
        B = codes.shape[0]

        def one_slice(s):
            slice_idx = jnp.full((B,), s, jnp.int32)
            logits = self.model.apply({"params": state.params}, codes, slice_idx,
                                      **_cond(labels))
            nll = code_nll(logits, subscale.get_slice(codes, self.stride, slice_idx))
            w = frame_weights(slice_idx, self.clip_shape, self.stride, self.n_prime)
            w = jnp.broadcast_to(w * mask[:, None, None, None], nll.shape)
            return jnp.sum(nll * w), jnp.sum(w)

        nats, count = jax.lax.map(one_slice, jnp.asarray(self.slices))
        return {"nats": jnp.sum(nats), "positions": jnp.sum(count), "clips": jnp.sum(mask)}

    def summarize_eval(self, sums: dict) -> dict:
        n = max(float(sums["positions"]), 1.0)
        nats = float(sums["nats"]) / n
        return {"bits_per_code": nats / LN2, "nats_per_code": nats,
                "num_clips": int(sums["clips"]), "num_positions": int(sums["positions"])}

    def make_iterator(self, split: str, mesh, *, train: bool):
        from lvt_jax.data import codes as codes_lib
        cfg = self.train_cfg
        batch = int(cfg.batch_size if train else cfg.get("eval_batch_size", cfg.batch_size))
        sharding = shd.batch_sharding(mesh, 5, shd.rules_from_config(self.config))
        return codes_lib.make_code_iterator(self.codes_dir(split), self.clip_shape[0], batch,
                                            sharding, seed=int(self.config.seed), train=train,
                                            data_cfg=self.config.data,
                                            num_classes=self.num_classes)

    def codes_dir(self, split: str) -> str:
        """config.transformer.codes_dir/<split> if set, else WORKDIR/codes/<split>."""
        from lvt_jax.data import codes as codes_lib
        root = self.config.transformer.get("codes_dir", None)
        if root:
            return fileio.join(root, split)
        if self.workdir is None:
            raise ValueError("TransformerStage needs the workdir holding codes/ to read data: "
                             "construct it as TransformerStage(config, workdir) or set "
                             "--config.transformer.codes_dir.")
        return codes_lib.split_dir(self.workdir, split)

    def counted_positions_per_clip(self) -> float:
        """Loss positions of one clip's slice, averaged over the slices drawn in training."""
        per_frame = int(np.prod(self.slice_shape[1:]))
        w = frame_weights(jnp.asarray(self.slices), self.clip_shape, self.stride, self.n_prime)
        return float(np.asarray(w).sum(axis=(1, 2, 3)).mean()) * per_frame

    def items_per_step(self, batch: dict) -> int:
        return int(round(int(self.train_cfg.batch_size) * self.counted_positions_per_clip()))
