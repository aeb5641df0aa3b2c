"""python -m lvt_jax.bench NAME --config=configs/bair.py[:VARIANTS] [--batch=N] [--json]

NAME is a registered benchmark (`python -m lvt_jax.bench list` prints them) or `suite`,
which runs every registered benchmark's suite entries (float32 and bf16, DSFVT and
DSTSVT, ...) each in its own process and prints one JSON object. Prints a readable report
and, with --json, one JSON object as the last stdout line.
"""
import importlib
import json

import jax
from absl import app, flags
from ml_collections import config_flags

from lvt_jax.bench import common, registry, suite

FLAGS = flags.FLAGS
_BEFORE = set(FLAGS)
config_flags.DEFINE_config_file("config", "configs/bair.py", "Config file.", lock_config=False)
flags.DEFINE_integer("batch", None, "Global batch size (default: the config's).")
flags.DEFINE_integer("steps", 10, "Timed steps (the median is reported).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_bool("json", False, "Print a JSON object as the last line.")
flags.DEFINE_list("sample_batches", None, "sample: batch sizes to try (default: the "
                  "platform's DEFAULT_BATCHES in lvt_jax/bench/sample.py).")
flags.DEFINE_integer("sample_slices", 0, "sample: slices timed per clip (0: all), extrapolated.")
flags.DEFINE_integer("naive_positions", 4, "sample: positions the naive sampler is timed over.")
flags.DEFINE_list("fvd_batches", None, "fvd: I3D batch sizes to try (default: 1,2,4 on CPU, "
                  "8,16,32,64,128 on accelerators); --steps batches are timed per size.")
flags.DEFINE_bool("memory_rss", False, "memory: also run each stage's step once in a "
                  "process of its own and report its peak RSS.")
flags.DEFINE_list("only", None, "suite: run only these entries (names from `list`).")
flags.DEFINE_list("skip", None, "suite: leave these entries out.")
flags.DEFINE_integer("entry_timeout", 0, "suite: seconds before an entry is stopped (0: none).")
BENCH_FLAGS = tuple(sorted(set(FLAGS) - _BEFORE))  # what `suite` may pass on to its entries


def run_benchmark(name: str, config) -> dict:
    """Runs one registered benchmark and adds what every result reports."""
    matmul = common.run_matmul_gflops()  # before the benchmark, shared with it
    result = registry.BENCHMARKS[name].run(config, FLAGS)
    dtype = str(result.get("dtype", "float32"))
    # mfu against the peak of the dtype that ran (on CPU: the same-run matmul in it)
    rate = matmul if dtype == "float32" or jax.devices()[0].platform != "cpu" else \
        common.matmul_gflops(dtype=dtype)
    peak, peak_src = common.peak_flops(rate, dtype)
    if "flops_per_step" in result:
        result.update(mfu=result["flops_per_step"] / result["step_s"] / peak, peak_flops=peak,
                      peak_source=peak_src)
    if dtype != "float32":
        result[f"matmul_gflops_{dtype}"] = rate
    result.update(
        benchmark=name, device=common.device_description(),
        matmul_gflops=matmul, peak_rss_gib=common.peak_rss_gib(),
        # measured again after the run: a large change means the CPU was shared meanwhile
        matmul_gflops_after=common.matmul_gflops())
    return result


def main(argv):
    for module in registry.MODULES:
        importlib.import_module(module)
    names = sorted(registry.BENCHMARKS)
    if len(argv) != 2 or argv[1] not in names + ["suite", "list"]:
        raise app.UsageError(f"usage: python -m lvt_jax.bench {{{'|'.join(names)}|suite|list}} "
                             "[flags]")
    which = argv[1]
    if which == "list":
        for entry, bench, variants in registry.suite_entries():
            print(f"{entry:>32}: {bench}" + (f" (+{variants})" if variants else ""))
        for b in registry.BENCHMARKS.values():
            print(f"{b.name:>32}: {b.help}")
        return
    if which == "suite":
        result = suite.run_suite(FLAGS, BENCH_FLAGS)
    else:
        result = run_benchmark(which, FLAGS.config)
    for k, v in result.items():
        if isinstance(v, dict) and which == "suite":
            continue
        print(f"{k:>16}: {v:.4g}" if isinstance(v, float) else f"{k:>16}: {v}")
    if FLAGS.json:
        print(json.dumps(result), flush=True)
    if which == "suite" and result.get("failed"):
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
