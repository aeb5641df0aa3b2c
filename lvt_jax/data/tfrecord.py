"""A minimal TFRecord reader and writer, and `tf.train.Example` helpers, without TensorFlow.

Why: the original BAIR release is a set of `.tfrecords` files of `tf.train.Example`s, and
this project must not depend on TensorFlow. The framing is simple:

    uint64 length (little endian)
    uint32 masked_crc32c(length bytes)
    byte   data[length]
    uint32 masked_crc32c(data)

Both CRCs are checked on read, so a truncated or corrupted file fails loudly instead of
silently feeding garbage into training. Examples are parsed with the protobuf classes that
tensorflow-datasets ships (`tensorflow_datasets.proto.tf_example_pb2`).

CRC32C uses `google_crc32c` (C extension) when installed; otherwise a pure-Python table
implementation (correct, but ~100x slower: fine for tests, slow for the real 30 GB set).
"""

from __future__ import annotations

import os
import struct
from typing import BinaryIO, Iterable, Iterator, Mapping

import numpy as np
from tensorflow_datasets.proto import tf_example_pb2

from lvt_jax import fileio

try:  # pragma: no cover - depends on the environment
    import google_crc32c as _google_crc32c
except ImportError:  # pragma: no cover
    _google_crc32c = None

_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _make_table() -> list[int]:
    poly = 0x82F63B78  # CRC-32C (Castagnoli), reflected
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _make_table()


def _crc32c_python(data: bytes) -> int:
    crc = _U32
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _U32


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as an unsigned 32-bit int."""
    if _google_crc32c is not None:
        return int(_google_crc32c.value(bytes(data)))
    return _crc32c_python(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & _U32


class TFRecordCorruptError(ValueError):
    """A TFRecord file is truncated or fails its CRC check."""


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> int:
    """Writes raw records to a TFRecord file (atomically: temp file then rename).

    Returns the number of records written.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    with open(tmp, "wb") as f:
        for record in records:
            record = bytes(record)
            header = struct.pack("<Q", len(record))
            f.write(header)
            f.write(struct.pack("<I", masked_crc32c(header)))
            f.write(record)
            f.write(struct.pack("<I", masked_crc32c(record)))
            count += 1
    fileio.commit(tmp, path)  # flushed before the rename: never a truncated file
    return count


def _read_exact(f: BinaryIO, size: int, what: str, name: str, index: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise TFRecordCorruptError(
            f"{name}: record {index} is truncated ({what}: expected {size} bytes, got "
            f"{len(data)}). The file is incomplete; copy or extract it again."
        )
    return data


def iter_records(
    source: str | os.PathLike | BinaryIO, *, verify: bool = True, name: str | None = None
) -> Iterator[bytes]:
    """Yields the raw records of a TFRecord file (a path or a binary file object).

    With verify=True (the default) both CRCs of every record are checked.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            yield from iter_records(f, verify=verify, name=name or os.fspath(source))
        return
    name = name or getattr(source, "name", "<stream>")
    index = 0
    while True:
        header = source.read(8)
        if not header:
            return
        if len(header) != 8:
            raise TFRecordCorruptError(
                f"{name}: record {index} has a truncated length field ({len(header)} of 8 "
                "bytes). The file is incomplete; copy or extract it again."
            )
        (length_crc,) = struct.unpack("<I", _read_exact(source, 4, "length crc", name, index))
        if verify and masked_crc32c(header) != length_crc:
            raise TFRecordCorruptError(
                f"{name}: record {index} has a corrupted length field (CRC mismatch). "
                "The file is damaged; copy or extract it again."
            )
        (length,) = struct.unpack("<Q", header)
        data = _read_exact(source, length, "data", name, index)
        (data_crc,) = struct.unpack("<I", _read_exact(source, 4, "data crc", name, index))
        if verify and masked_crc32c(data) != data_crc:
            raise TFRecordCorruptError(
                f"{name}: record {index} failed its data CRC check. The file is damaged; "
                "copy or extract it again."
            )
        yield data
        index += 1


FeatureValue = bytes | Iterable[bytes] | np.ndarray | Iterable[float] | Iterable[int]


def make_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialises a `tf.train.Example` from {key: bytes | list of bytes | numbers}.

    Floating arrays become float_list, integer arrays int64_list, bytes bytes_list.
    """
    example = tf_example_pb2.Example()
    for key, value in features.items():
        feature = example.features.feature[key]
        if isinstance(value, (bytes, bytearray)):
            feature.bytes_list.value.append(bytes(value))
            continue
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], bytes):
            feature.bytes_list.value.extend(value)
            continue
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.floating):
            feature.float_list.value.extend(array.astype(np.float32).ravel().tolist())
        elif np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
            feature.int64_list.value.extend(array.astype(np.int64).ravel().tolist())
        else:
            raise TypeError(
                f"Feature {key!r}: cannot store dtype {array.dtype}; pass bytes, floats or ints."
            )
    return example.SerializeToString()


def parse_example(record: bytes) -> dict[str, list[bytes] | np.ndarray]:
    """Parses a serialised `tf.train.Example` into {key: list of bytes | numpy array}.

    float_list -> float32 array, int64_list -> int64 array, bytes_list -> list of bytes.
    """
    example = tf_example_pb2.Example()
    example.ParseFromString(record)
    out: dict[str, list[bytes] | np.ndarray] = {}
    for key, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if kind == "bytes_list":
            out[key] = list(feature.bytes_list.value)
        elif kind == "float_list":
            out[key] = np.asarray(feature.float_list.value, dtype=np.float32)
        elif kind == "int64_list":
            out[key] = np.asarray(feature.int64_list.value, dtype=np.int64)
        else:  # an empty Feature
            out[key] = np.zeros((0,), np.float32)
    return out
