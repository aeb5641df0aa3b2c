"""python -m lvt_jax.bench {train_vqvae,train_transformer} --config=configs/bair.py --batch=N [--json]

Prints a readable report and, with --json, one JSON object as the last stdout line.
"""
import json

from absl import app, flags
from ml_collections import config_flags

from lvt_jax.bench import common, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/bair.py", "Config file.", lock_config=False)
flags.DEFINE_integer("batch", None, "Global batch size (default: the config's).")
flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_bool("json", False, "Print a JSON object as the last line.")

BENCHES = ("train_vqvae", "train_transformer")


def main(argv):
    if len(argv) != 2 or argv[1] not in BENCHES:
        raise app.UsageError(f"usage: python -m lvt_jax.bench {{{'|'.join(BENCHES)}}} [flags]")
    which, config = argv[1], FLAGS.config
    matmul = common.matmul_gflops()
    if which == "train_vqvae":
        batch = FLAGS.batch or int(config.vqvae.train.batch_size)
        result = train.train_vqvae(config, batch, FLAGS.steps, FLAGS.warmup)
    elif which == "train_transformer":
        batch = FLAGS.batch or int(config.transformer.train.batch_size)
        result = train.train_transformer(config, batch, FLAGS.steps, FLAGS.warmup)
    peak, peak_src = common.peak_flops(matmul)
    result.update(
        benchmark=which, device=common.device_description(),
        mfu=result["flops_per_step"] / result["step_s"] / peak, peak_flops=peak,
        peak_source=peak_src, matmul_gflops=matmul, peak_rss_gib=common.peak_rss_gib(),
        # measured again after the run: a large change means the CPU was shared meanwhile
        matmul_gflops_after=common.matmul_gflops())
    for k, v in result.items():
        print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")
    if FLAGS.json:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
