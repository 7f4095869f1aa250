"""Reader for the IDX file format of (Fashion-)MNIST, plain or gzip-compressed.

IDX layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, one type byte, one byte
with the number of dimensions d, then d big-endian uint32 sizes, then the values in
row-major order, big-endian. Every inconsistency is a ValueError: a corrupt download must
never turn into silently wrong training data.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib

import numpy as np

# IDX type byte -> big-endian NumPy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str | os.PathLike) -> bytes:
    """Reads a file, decompressing it when its content (not its name) is gzip."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as err:
        # EOFError: truncated stream; BadGzipFile (an OSError) / zlib.error: corrupt data.
        raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err


def parse_idx(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Parses the bytes of one IDX file.

    Args:
      data: the uncompressed file content.
      source: a name for error messages (usually the path).

    Returns:
      A read-only array with the file's shape, in native byte order.

    Raises:
      ValueError: bad magic number, unknown type byte, or a length that does not match
        the header.
    """
    if len(data) < 4:
        raise ValueError(f"{source}: too short for an IDX header ({len(data)} bytes)")
    zero0, zero1, type_code, ndim = struct.unpack(">BBBB", data[:4])
    if zero0 != 0 or zero1 != 0:
        raise ValueError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()} (must start with 0x0000)"
        )
    if type_code not in IDX_DTYPES:
        raise ValueError(f"{source}: unknown IDX data type code 0x{type_code:02x}")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{source}: truncated IDX header ({len(data)} < {header_len} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = IDX_DTYPES[type_code]
    expected = header_len + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        kind = "truncated" if len(data) < expected else "has trailing bytes"
        raise ValueError(
            f"{source}: IDX file {kind}: header says shape {shape} of {dtype.name} "
            f"({expected} bytes), file has {len(data)} bytes"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    if dtype.itemsize > 1:
        array = array.astype(dtype.newbyteorder("="))
    array.setflags(write=False)
    return array


def read_idx(
    path: str | os.PathLike,
    *,
    dtype: np.dtype | str | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Reads an IDX file (gzip-compressed or not; detected from the content).

    Args:
      path: the file.
      dtype: if given, the element type the file must declare (e.g. ``"uint8"``).
      ndim: if given, the number of dimensions the file must declare.

    Returns:
      A read-only array with the shape given in the file's header.

    Raises:
      ValueError: the file is corrupt, truncated, or not of the expected type or rank.
    """
    array = parse_idx(_read_bytes(path), source=str(path))
    if dtype is not None and array.dtype != np.dtype(dtype):
        raise ValueError(f"{path}: IDX data type is {array.dtype}, expected {np.dtype(dtype)}")
    if ndim is not None and array.ndim != ndim:
        raise ValueError(
            f"{path}: IDX file has {array.ndim} dimensions {array.shape}, expected {ndim}"
        )
    return array
