"""The fast .npy decoder agrees with np.load, and falls back for layouts it does not parse."""

import io

import numpy as np
import pytest

from wallwm_pretrain.data.npy import load_npy


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
