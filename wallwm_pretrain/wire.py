"""Messages of the policy server on the wire: msgpack with numpy arrays (openpi's convention).

A numpy array travels as a msgpack map ``{b"__ndarray__": True, b"data": <raw bytes>,
b"dtype": <numpy dtype string, e.g. "<f4">, b"shape": [...]}`` and a numpy scalar as
``{b"__npgeneric__": True, b"data": <value>, b"dtype": ...}``, so existing openpi clients and
servers read our frames and we read theirs. Everything else is plain msgpack (str keys, ints,
floats, lists, dicts). Object, void and complex arrays are refused: their bytes are not
portable. The raw-bytes form costs no encoding time and no size overhead; the price is that
the byte order is the sender's (``dtype`` carries it, so a big-endian peer still decodes).

This module imports numpy and msgpack only, so a robot-side client needs nothing else.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

_REFUSED_KINDS = {"O": "object", "V": "void/structured", "c": "complex"}


class WireError(ValueError):
    """A frame is not msgpack, or an array in it cannot be rebuilt."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in _REFUSED_KINDS:
        raise WireError(f"cannot send a numpy {_REFUSED_KINDS[obj.dtype.kind]} array (dtype {obj.dtype})")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(),
                b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot encode {type(obj).__name__} as msgpack")


def _decode(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            if dtype.kind in _REFUSED_KINDS:
                raise WireError(f"numpy {_REFUSED_KINDS[dtype.kind]} arrays are refused (dtype {dtype})")
            shape = tuple(int(n) for n in obj[b"shape"])
            # frombuffer gives a read-only view of the frame; copy so callers may edit in place.
            return np.frombuffer(obj[b"data"], dtype=dtype).reshape(shape).copy()
        except WireError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed numpy array in the message ({exc})") from None
    if b"__npgeneric__" in obj:
        try:
            return np.dtype(obj[b"dtype"]).type(obj[b"data"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed numpy scalar in the message ({exc})") from None
    return obj


def packb(obj: Any) -> bytes:
    """One message -> one binary websocket frame."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """One binary websocket frame -> the message, with numpy arrays rebuilt."""
    try:
        return msgpack.unpackb(data, object_hook=_decode, raw=False, strict_map_key=False)
    except WireError:
        raise
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as exc:
        raise WireError(f"the frame is not a msgpack message ({type(exc).__name__}: {exc})") from None
