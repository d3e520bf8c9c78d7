"""A strict reader for the IDX format of MNIST and Fashion-MNIST (plain or gzip-compressed).

IDX layout (all integers big-endian): two zero bytes, one type byte (0x08 = uint8, 0x09 =
int8, 0x0B = int16, 0x0C = int32, 0x0D = float32, 0x0E = float64), one byte with the number
of dimensions ``d``, then ``d`` uint32 sizes, then the data in C order. The file must hold
exactly that many bytes: anything shorter is truncated, anything longer is not IDX.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from jaxcnn.errors import DataError

__all__ = ["read_idx", "IDX_TYPES"]

#: IDX type byte -> big-endian NumPy dtype.
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path, fix: str) -> tuple[bytes, bool]:
    """The file's (decompressed) content and whether it was gzip-compressed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file {path} does not exist. {fix}") from None
    except OSError as e:
        raise DataError(f"Cannot read IDX file {path}: {e}. {fix}") from e
    if raw[:2] != _GZIP_MAGIC:
        return raw, False
    try:
        return gzip.decompress(raw), True
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"IDX file {path} is a truncated or corrupt gzip file ({e}). {fix}"
        ) from e


def read_idx(path: str | os.PathLike[str], *, fix: str = "") -> np.ndarray:
    """Read one IDX file (``.gz`` or uncompressed; detected from the content, not the name).

    Args:
        path: the file, e.g. ``train-images-idx3-ubyte.gz``.
        fix: advice appended to error messages (what the user should do about a bad file).

    Returns:
        The array with its native dtype (uint8 for MNIST) and the shape from the header,
        e.g. ``(60000, 28, 28)`` for training images, ``(60000,)`` for labels.

    Raises:
        DataError: missing file, bad gzip stream, wrong magic number, or a size that does not
            match the header exactly (truncated or padded file). The message names the file.
    """
    p = Path(path)
    fix = fix or "Delete it and download or copy it again."
    data, compressed = _read_bytes(p, fix)
    if len(data) < 4:
        raise DataError(
            f"IDX file {p} is truncated: {len(data)} bytes, shorter than the 4-byte header. {fix}"
        )
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in IDX_TYPES or ndim == 0:
        raise DataError(
            f"IDX file {p} has a bad magic number 0x{data[:4].hex()} (expected 0x0000TTDD with "
            f"a known type TT such as 08 and a dimension count DD > 0): it is not an IDX file "
            f"or it is corrupt. {fix}"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise DataError(
            f"IDX file {p} is truncated: {len(data)} bytes, shorter than its {header_len}-byte "
            f"header. {fix}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_TYPES[type_code]
    expected = header_len + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says (corrupt)"
        raise DataError(
            f"IDX file {p} is {what}: header says shape {tuple(dims)} ({expected} bytes) but "
            f"the {'decompressed ' if compressed else ''}file has "
            f"{len(data)} bytes. {fix}"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(dims)
    # Native byte order, and a writeable array that owns its memory.
    return arr.astype(dtype.newbyteorder("="))
