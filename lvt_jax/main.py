"""python -m lvt_jax.main --config=configs/bair.py[:VARIANT] --workdir=DIR [--mode=MODE]"""
import logging as pylogging

from absl import app, flags, logging
from ml_collections import config_flags

from lvt_jax import distributed, run

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/NAME.py[:VARIANT]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
flags.DEFINE_string("mode", "all", f"One of {sorted(run.MODES)} or 'all'.")
flags.DEFINE_enum("distributed", "env", ["env", "auto", "off"],
                  "env: from the flags below or JAX_* variables; auto: cluster auto-detection.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-process).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-process).")
flags.DEFINE_enum("sampler", None, ["cached", "naive"],
                  "Overrides config.sample.sampler: naive is the reference's slow method.")
flags.mark_flags_as_required(["config"])


def _setup_logging() -> None:
    """Our progress at INFO; library chatter (orbax, tfds) only from WARNING up."""
    logging.set_verbosity(logging.WARNING)
    ours = pylogging.getLogger("lvt_jax")
    if not ours.handlers:
        handler = pylogging.StreamHandler()
        handler.setFormatter(pylogging.Formatter("%(asctime)s %(name)s: %(message)s", "%H:%M:%S"))
        ours.addHandler(handler)
    ours.setLevel(pylogging.INFO)
    ours.propagate = False


def main(argv):
    del argv
    _setup_logging()
    distributed.initialize(FLAGS.distributed, FLAGS.coordinator_address,
                           FLAGS.num_processes, FLAGS.process_id)
    if FLAGS.sampler:
        FLAGS.config.sample.sampler = FLAGS.sampler
    run.run(FLAGS.config, FLAGS.workdir, FLAGS.mode)


if __name__ == "__main__":
    app.run(main)
