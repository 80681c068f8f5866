"""Reader for the IDX array format of MNIST and Fashion-MNIST (plain or gzip-compressed).

Layout (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT"): two zero bytes, one byte
naming the element type, one byte giving the number of dimensions, then one big-endian uint32
per dimension, then the elements in C order, big-endian.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

# IDX type byte -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode one uncompressed IDX buffer into an array in native byte order.

    Raises ``ValueError`` naming ``source`` when the magic number, type byte or length is wrong.
    """
    if len(data) < 4:
        raise ValueError(f"{source}: not an IDX file (only {len(data)} bytes; the header alone is 4)")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise ValueError(f"{source}: not an IDX file (magic number starts {data[:2].hex()}, expected 0000)")
    if type_code not in _IDX_DTYPES:
        raise ValueError(
            f"{source}: unknown IDX element type 0x{type_code:02x} "
            f"(known: {', '.join(f'0x{code:02x}' for code in _IDX_DTYPES)})"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{source}: truncated IDX header ({ndim} dimensions need {header_size} bytes, got {len(data)})"
        )
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    payload = len(data) - header_size
    if payload != expected:
        raise ValueError(
            f"{source}: IDX header declares shape {shape} of {dtype.name} ({expected} bytes) "
            f"but the file holds {payload} bytes of data; the file is truncated or corrupt"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gunzipping it first when it starts with the gzip magic number."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise ValueError(f"{path}: corrupt gzip stream ({error}); re-install or re-download the file") from error
    return parse_idx(raw, source=str(path))
