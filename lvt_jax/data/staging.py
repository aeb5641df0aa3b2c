"""A dataset whose `data.data_dir` is in a bucket (gs://...) is built locally, then uploaded.

tfds writes array_record shards through a writer that only knows local files, so the
preparation (synthetic generation, BAIR conversion, video decoding) runs in a local
staging folder and the finished version folder is copied to the bucket. tfds counts a
version as prepared once its `dataset_info.json` and `features.json` exist, so those two
are uploaded last: an interrupted upload is not mistaken for a dataset and is redone.
Reading needs no copy: tfds finds the files through etils' epath and array_record reads
gs:// itself. The staging folder is kept until the upload succeeds, so an interrupted
build resumes there (local videos are decoded once).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from typing import Any, Callable

from lvt_jax import fileio

log = logging.getLogger(__name__)

MARKERS = ("features.json", "dataset_info.json")  # their presence = prepared (tfds)


def staging_dir(data_dir: str) -> str:
    """The local folder where a bucket's dataset is built: $LVT_JAX_STAGING_DIR, else
    ~/.cache/lvt_jax/staging, one subfolder per data_dir."""
    root = os.environ.get("LVT_JAX_STAGING_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "lvt_jax", "staging")
    slug = re.sub(r"[^A-Za-z0-9]+", "_", data_dir).strip("_")[-48:]
    return os.path.join(root, f"{slug}_{hashlib.sha256(data_dir.encode()).hexdigest()[:10]}")


def prepare_and_upload(builder: Any, local_builder: Callable[[str], Any],
                       prepare: Callable[[Any], None]) -> None:
    """Builds `builder`'s dataset (remote data_dir) in a local staging folder with
    `prepare(local_builder(staging))`, then uploads its version folder to the bucket."""
    remote = os.fspath(builder.data_path)
    staging = staging_dir(os.fspath(builder.data_dir_root))
    local = local_builder(staging)
    log.info("%s: data_dir is in a bucket; building it in %s, then uploading to %s",
             builder.info.full_name, staging, remote)
    prepare(local)
    files = fileio.upload_tree(os.fspath(local.data_path), remote, last=MARKERS)
    log.info("%s: uploaded %d files to %s", builder.info.full_name, len(files), remote)
    shutil.rmtree(staging, ignore_errors=True)
