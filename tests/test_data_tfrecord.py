"""Tests for the TF-free TFRecord reader/writer and tf.train.Example helpers."""

from __future__ import annotations

import io

import numpy as np
import pytest

from lvt_jax.data import tfrecord

# The first two records (b"1", b"1 1") of a file written by TensorFlow's TFRecordWriter.
TF_WRITTEN = bytes.fromhex(
    "01000000000000000175de4131c30c4ad60300000000000000b099490e31203159bed8de"
)


def test_crc32c_known_value_both_implementations():
    assert tfrecord.crc32c(b"123456789") == 0xE3069283
    assert tfrecord._crc32c_python(b"123456789") == 0xE3069283
    data = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    assert tfrecord.crc32c(data) == tfrecord._crc32c_python(data)


def test_writer_matches_tensorflow_bytes(tmp_path):
    path = tmp_path / "x.tfrecord"
    tfrecord.write_records(path, [b"1", b"1 1"])
    assert path.read_bytes() == TF_WRITTEN
    assert list(tfrecord.iter_records(io.BytesIO(TF_WRITTEN))) == [b"1", b"1 1"]


def test_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    records = [b"", b"x"] + [rng.bytes(int(n)) for n in rng.integers(1, 50_000, 8)]
    path = tmp_path / "r.tfrecords"
    assert tfrecord.write_records(path, records) == len(records)
    assert list(tfrecord.iter_records(path)) == records
    assert list(tfrecord.iter_records(str(path))) == records
    assert not list(tmp_path.glob("*.tmp-*")), "temp file must be renamed away"


@pytest.mark.parametrize(
    "offset, message",
    [
        (8 + 4 + 100, "data CRC"),  # a byte inside record 0's payload
        (3, "length field"),  # a byte of record 0's length
        (9, "length field"),  # record 0's stored length CRC
        (8 + 4 + 1024 + 1, "data CRC"),  # record 0's stored data CRC
        (1040 + 8 + 4 + 7, "record 1 failed"),  # record 1's payload
    ],
)
def test_corruption_is_detected(tmp_path, offset, message):
    path = tmp_path / "c.tfrecords"
    tfrecord.write_records(path, [bytes(range(256)) * 4] * 2)  # 2 records of 1024 bytes
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(tfrecord.TFRecordCorruptError, match=message):
        list(tfrecord.iter_records(path))


def test_payload_corruption_passes_only_without_verification(tmp_path):
    path = tmp_path / "c.tfrecords"
    tfrecord.write_records(path, [b"hello world"])
    raw = bytearray(path.read_bytes())
    raw[12] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(tfrecord.TFRecordCorruptError):
        list(tfrecord.iter_records(path))
    assert len(list(tfrecord.iter_records(path, verify=False))) == 1


def test_truncation_is_detected(tmp_path):
    path = tmp_path / "t.tfrecords"
    tfrecord.write_records(path, [b"a" * 100, b"b" * 100])
    raw = path.read_bytes()
    for cut in (len(raw) - 1, len(raw) - 50, 116 + 5):
        path.write_bytes(raw[:cut])
        with pytest.raises(tfrecord.TFRecordCorruptError, match="truncated"):
            list(tfrecord.iter_records(path))


def test_example_round_trip():
    image = np.arange(12, dtype=np.uint8).tobytes()
    record = tfrecord.make_example(
        {"0/image/encoded": image, "0/action": [0.5, -1.0, 2.0, 3.25], "label": np.array([3, 4])}
    )
    parsed = tfrecord.parse_example(record)
    assert parsed["0/image/encoded"] == [image]
    np.testing.assert_array_equal(parsed["0/action"], np.array([0.5, -1.0, 2.0, 3.25], np.float32))
    assert parsed["0/action"].dtype == np.float32
    np.testing.assert_array_equal(parsed["label"], [3, 4])
    assert parsed["label"].dtype == np.int64
