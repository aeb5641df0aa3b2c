"""python -m lvt_jax.bench {train_vqvae,train_transformer,fvd,sample} --config=configs/bair.py --batch=N [--json]

Prints a readable report and, with --json, one JSON object as the last stdout line.
"""
import json

import jax
from absl import app, flags
from ml_collections import config_flags

from lvt_jax.bench import common, fvd, train
from lvt_jax.bench import sample as sample_bench

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/bair.py", "Config file.", lock_config=False)
flags.DEFINE_integer("batch", None, "Global batch size (default: the config's).")
flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_bool("json", False, "Print a JSON object as the last line.")
flags.DEFINE_list("sample_batches", None, "sample: batch sizes to try (default: 1,16,64 on "
                  "CPU, 1,64,256,1024 on accelerators).")
flags.DEFINE_integer("sample_slices", 0, "sample: slices timed per clip (0: all), extrapolated.")
flags.DEFINE_integer("naive_positions", 4, "sample: positions the naive sampler is timed over.")
flags.DEFINE_list("fvd_batches", None, "fvd: I3D batch sizes to try (default: 1,2,4 on CPU, "
                  "8,16,32,64,128 on accelerators); --steps batches are timed per size.")

BENCHES = ("train_vqvae", "train_transformer", "fvd", "sample")


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
    elif which == "fvd":
        cpu = jax.devices()[0].platform == "cpu"
        batches = [int(b) for b in FLAGS.fvd_batches or (
            ["1", "2", "4"] if cpu else ["8", "16", "32", "64", "128"])]
        steps = FLAGS.steps if FLAGS["steps"].present or not cpu else 3
        result = fvd.fvd_features(config, batches, steps, FLAGS.warmup)
    elif which == "sample":
        cpu = jax.devices()[0].platform == "cpu"
        batches = [int(b) for b in FLAGS.sample_batches or (
            ["1", "16", "64"] if cpu else ["1", "64", "256", "1024"])]
        result = sample_bench.sample(config, batches, FLAGS.sample_slices, FLAGS.naive_positions)
    peak, peak_src = common.peak_flops(matmul)
    if "flops_per_step" in result:
        result.update(mfu=result["flops_per_step"] / result["step_s"] / peak, peak_flops=peak,
                      peak_source=peak_src)
    result.update(
        benchmark=which, device=common.device_description(),
        matmul_gflops=matmul, peak_rss_gib=common.peak_rss_gib(),
        # measured again after the run: a large change means the CPU was shared meanwhile
        matmul_gflops_after=common.matmul_gflops())
    for k, v in result.items():
        print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")
    if FLAGS.json:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    app.run(main)
