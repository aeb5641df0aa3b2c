"""The state every training stage carries: one pytree, checkpointed whole."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
    step: jax.Array        # int32 scalar
    params: Any            # gradient-trained parameters
    opt_state: Any         # optax state
    extra: Any             # non-gradient model variables (e.g. EMA codebooks), {} if none
    rng: jax.Array         # raw uint32 key data; per-step keys are fold_in(rng, step)
