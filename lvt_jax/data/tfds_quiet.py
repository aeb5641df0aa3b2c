"""Preparing a tfds dataset without tfds's console lines that are untrue for our builders.

None of our builders downloads anything (synthetic data is generated, BAIR and
Kinetics-600 are converted from local files), yet tfds prints "Downloading and preparing
dataset Unknown size (download: Unknown size, ...)" and "Dataset ... downloaded and
prepared", and logs "Using custom data configuration ..." whenever a builder is made with
a config object, and "Variant folder ... has no dataset_info.json" before a first build.
Those are replaced by our own two lines; tfds's progress bars (generating, shuffling)
stay, since they inform during a long build.
"""
from __future__ import annotations

import logging

log = logging.getLogger("lvt_jax.data")

_NOISE = ("Using custom data configuration", "has no dataset_info.json")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in _NOISE)


def install_log_filter() -> None:
    """Drops tfds's noise lines from absl's logger (once per process)."""
    absl_logger = logging.getLogger("absl")
    if not any(isinstance(f, _DropNoise) for f in absl_logger.filters):
        absl_logger.addFilter(_DropNoise())


def download_and_prepare(builder) -> None:
    """`builder.download_and_prepare` (array_record, never from GCS), saying what happens."""
    import tensorflow_datasets as tfds
    log.info("Preparing %s in %s (one-time; nothing is downloaded).", builder.info.full_name,
             builder.data_dir)
    builder._log_download_bytes = lambda: None  # "Downloading and preparing dataset ..."
    builder._log_download_done = lambda: None   # "Dataset ... downloaded and prepared ..."
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
    log.info("Prepared %s in %s; later runs reuse it.", builder.info.full_name, builder.data_dir)
