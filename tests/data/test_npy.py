"""The fast .npy decoder agrees with np.load, and falls back for layouts it does not parse."""

import io

import numpy as np
import pytest

from wallwm_pretrain.data.npy import NpyError, load_npy


def npy(x):
    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()


@pytest.mark.parametrize(
    "x",
    [np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((2, 2, 3, 4, 3), np.uint8), np.float32(3.5).reshape(()),
     np.arange(5, dtype=np.int64), np.zeros((0, 4), np.float32), np.ones((7,), np.float64)],
)
def test_matches_np_load(x):
    y = load_npy(npy(x))
    assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(y, x)


def test_falls_back_for_fortran_order_and_big_endian():
    f = np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3))
    assert np.array_equal(load_npy(npy(f)), f)
    b = np.arange(4, dtype=">f4")
    assert np.array_equal(load_npy(npy(b)), b)


def test_garbage_raises():
    with pytest.raises(ValueError):
        load_npy(b"not an npy file at all")


def _with_header(x, old, new):
    """``x`` saved, with ``old`` replaced by ``new`` in its header (padding keeps the length)."""
    data = npy(x)
    end = data.index(b"\n")
    header = data[10:end].replace(old, new)
    header = header.ljust(end - 10) if len(header) <= end - 10 else header
    return data[:8] + (len(header) + 1).to_bytes(2, "little") + header + b"\n" + data[end + 1:]


@pytest.mark.parametrize("data, message", [
    (_with_header(np.zeros((3, 4), np.float32), b"(3, 4)", b"(4611686018427387904,)"),
     r"header declares shape \(4611686018427387904,\) of <f4: 4611686018427387904 items \* 4 bytes = "
     r"18446744073709551616 bytes, the payload has 48"),
    (npy(np.zeros((3, 4), np.float32)) + b"\0" * 4, r"12 items \* 4 bytes = 48 bytes, the payload has 52"),
    (npy(np.zeros((3, 4), np.float32))[:-1], r"the payload has 47"),
    (_with_header(np.zeros(3, np.float32), b"'<f4'", b"'|O'"), r"holds Python objects"),
    (npy(np.zeros(2))[:7] + b"\x07" + npy(np.zeros(2))[8:], r"unsupported .npy format version 1.7"),
])
def test_a_lying_header_fails_with_the_arithmetic_before_allocating(data, message):
    with pytest.raises(NpyError, match=message):
        load_npy(data)
