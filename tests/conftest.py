"""Eight fake CPU devices for every test (must be set before jax is imported)."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# One persistent compilation cache for the session (and the CLI subprocesses it starts):
# the resume tests compile the same steps several times (each trainer.train builds its
# stage anew) and every CLI test compiles what an earlier test already did. Removed at exit.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile
    _cache = tempfile.mkdtemp(prefix="lvt_jax_test_cache_")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache,
                      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory):
    """One tiny synthetic_pushing dataset (12 train / 4 test videos) for the session."""
    d = tmp_path_factory.mktemp("tfds")
    from tests.helpers import tiny_config
    from lvt_jax.data import pipeline
    cfg = tiny_config(d)
    for split in ("train", "test"):
        pipeline.load_videos(cfg.data, split)
    return str(d)


@pytest.fixture(scope="session")
def pipeline_run(tiny_data_dir, tmp_path_factory):
    """One --mode=all run of the tiny demo for the session: (config, workdir).

    Tests read its workdir (checkpoints, codes, samples) and must not modify it.
    """
    from lvt_jax import run
    from tests.helpers import tiny_config
    workdir = str(tmp_path_factory.mktemp("pipeline"))
    cfg = tiny_config(tiny_data_dir)
    run.run(cfg, workdir, "all")
    return cfg, workdir


@pytest.fixture(scope="session")
def hdr_pipeline_run(tiny_data_dir, tmp_path_factory):
    """One --mode=all run of the tiny HDR demo for the session: (config, workdir).

    Tests read its workdir (checkpoints, latents, samples) and must not modify it.
    """
    from configs import hdr_demo
    from lvt_jax import run
    workdir = str(tmp_path_factory.mktemp("hdr_pipeline"))
    cfg = hdr_demo.get_config("tiny")
    cfg.data.data_dir = str(tiny_data_dir)
    run.run(cfg, workdir, "all")
    return cfg, workdir
