"""Per-platform XLA options: on CPU, convolutions leave YNNPACK (Eigen's run ~1.65x faster
in the stage-1 step, docs/benchmarks.md) with the same values; the trainer uses them."""
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from lvt_jax import compile_options


def test_cpu_convolutions_leave_ynnpack_with_the_same_values():
    options = compile_options.for_devices(jax.devices())
    assert options == compile_options.CPU_OPTIONS
    conv = lambda x, k: lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                                 dimension_numbers=("NHWC", "HWIO", "NHWC"))
    grad = jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1))
    x = jax.random.normal(jax.random.key(0), (8, 16, 16, 64))
    k = jax.random.normal(jax.random.key(1), (3, 3, 64, 64)) * 0.05
    default = jax.jit(grad).lower(x, k).compile()
    tuned = jax.jit(grad, compiler_options=options).lower(x, k).compile()
    assert "__ynn_fusion" in default.as_text()  # XLA:CPU's default: YNNPACK convolutions
    assert "__ynn_fusion" not in tuned.as_text() and "convolution(" in tuned.as_text()
    for a, b in zip(default(x, k), tuned(x, k)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_trainer_compiles_steps_with_the_platform_options():
    from configs import demo
    from lvt_jax import sharding as shd, trainer
    from lvt_jax.stages.vqvae import VQVAEStage
    cfg = demo.get_config("tiny")
    mesh = shd.make_mesh(cfg.mesh, jax.devices()[:1])
    bound = trainer.ShardedStage(VQVAEStage(cfg), mesh, shd.rules_from_config(cfg))
    state = bound.init()
    batch = {"image": np.zeros((8, 64, 64, 3), np.uint8)}
    with bound.context():
        text = bound._train_step.lower(state, batch).compile().as_text()
    assert "convolution(" in text and "__ynn_fusion" in text  # dots still in YNNPACK
    assert not any("convolution(" in ln for ln in text.splitlines() if "ynn" in ln.lower())
