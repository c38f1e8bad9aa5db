"""A strict, fast decoder for the ``.npy`` members of our shards.

``np.load`` parses each header with ``ast.literal_eval``; with four small arrays per event that
parse is about a tenth of the loader's time. Our shards hold simple little-endian C-order
arrays, so the header is matched by a strict pattern and the payload is wrapped with
``np.frombuffer``; other headers (Fortran order, other spellings) go through numpy's own header
parser. Either way the declared shape times the item size must equal the payload's length
exactly, checked in Python integers before any array exists: a lying header (a huge shape, a
shape the bytes cannot fill, trailing bytes) fails with the arithmetic instead of allocating or
returning wrong data. Object dtypes (pickles) and zero-size items are refused. Written by hand
because numpy exposes no header parser that also bounds the payload.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings

import numpy as np

from wallwm_pretrain.data.errors import InputError

_MAGIC = b"\x93NUMPY"
_HEADER = re.compile(
    rb"\{'descr': '(?P<descr>[<|][a-z]\d+)', 'fortran_order': False, 'shape': \((?P<shape>|\d+,|\d+(?:, \d+)+)\), \} *\n$"
)
_MAX_HEADER = 10_000  # numpy's own limit for untrusted headers


class NpyError(InputError):
    """A ``.npy`` payload that is not a plain array of the size its header declares."""


def _header(data: bytes) -> tuple[np.dtype, bool, tuple[int, ...], int]:
    """(dtype, fortran_order, shape, payload offset) from the header of ``data``."""
    if len(data) < 10 or data[:6] != _MAGIC:
        raise NpyError(f"not a .npy array (starts {data[:8]!r})")
    version = data[6]
    if data[7] != 0:
        raise NpyError(f"unsupported .npy format version {version}.{data[7]}")
    if version == 1:
        (hlen,), start = struct.unpack_from("<H", data, 8), 10
    elif version in (2, 3) and len(data) >= 12:
        (hlen,), start = struct.unpack_from("<I", data, 8), 12
    else:
        raise NpyError(f"unsupported .npy format version {version}")
    if hlen > _MAX_HEADER or start + hlen > len(data):
        raise NpyError(f"header of {hlen} bytes does not fit the {len(data)}-byte member")
    text = data[start : start + hlen]
    match = _HEADER.match(text)
    if match:
        shape = tuple(int(x) for x in match["shape"].split(b",") if x.strip())
        try:
            dtype = np.dtype(match["descr"].decode())
        except TypeError:
            raise NpyError(f"unknown dtype {match['descr'].decode()!r}") from None
        return dtype, False, shape, start + hlen
    reader = np.lib.format.read_array_header_1_0 if version == 1 else np.lib.format.read_array_header_2_0
    try:
        # the parser reads the length field again: give it the bytes after the magic and version;
        # its warnings (headers written by Python 2) would repeat for every sample
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape, fortran, dtype = reader(io.BytesIO(data[8 : start + hlen]), max_header_size=_MAX_HEADER)
    except Exception as exc:  # noqa: BLE001 - numpy's parser of untrusted text raises many types
        raise NpyError(f"unreadable header ({str(exc).splitlines()[0][:120]})") from None
    return dtype, bool(fortran), tuple(shape), start + hlen


def load_npy(data: bytes) -> np.ndarray:
    """The array in ``data`` (read-only, sharing its memory), or :class:`NpyError`."""
    dtype, fortran, shape, offset = _header(data)
    if dtype.hasobject:
        raise NpyError(f"dtype {dtype} holds Python objects (pickles are not read)")
    if dtype.itemsize == 0:
        raise NpyError(f"dtype {dtype} has zero-size items")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise NpyError(f"shape {shape} has a negative or non-integer dimension")
    count = math.prod(shape)
    expected, found = count * dtype.itemsize, len(data) - offset
    if expected != found:
        raise NpyError(
            f"header declares shape {shape} of {dtype.str}: {count} items * {dtype.itemsize} bytes = "
            f"{expected} bytes, the payload has {found}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    if fortran:
        return arr.reshape(shape[::-1]).transpose()
    return arr.reshape(shape)


def npy_handler(key: str, data: bytes):
    """A webdataset decode handler for ``*.npy`` members (None = not ours)."""
    if key.endswith(".npy") or key == "npy":
        return load_npy(data)
    return None
