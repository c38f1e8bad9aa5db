"""Nested state <-> JSON + flat tensors: exact round trip, clear errors, no shared storage."""

import json
import math
import random
from collections import namedtuple

import numpy as np
import pytest
import torch

from wallwm_pretrain.checkpoint import StateError, flatten_state, unflatten_state


def roundtrip(state):
    structure, tensors = flatten_state(state)
    # Through real JSON text, as on disk; allow_nan=False proves the encoding is strict JSON.
    structure = json.loads(json.dumps(structure, allow_nan=False))
    return unflatten_state(structure, tensors)


def test_scalars_containers_and_keys_keep_their_types():
    state = {
        0: {"step": 3, "big": 2**100, "neg0": -0.0},
        "tuple": (1, 2.0, None, True, "x", (3,)),
        "list": [1, [2, (3, 4)], {}],
        "floats": [float("inf"), float("-inf"), 0.1],
        (1, "a"): "tuple key",
        "__tuple__": "a key that looks like a tag",
        "bytes": b"\x00\xff",
        "np": (np.int64(7), np.float32(0.5), np.bool_(True)),
    }
    out = roundtrip(state)
    assert list(out) == list(state)  # dict order too
    assert out[0] == {"step": 3, "big": 2**100, "neg0": -0.0}
    assert type(out[0]["step"]) is int and math.copysign(1, out[0]["neg0"]) == -1
    assert out["tuple"] == (1, 2.0, None, True, "x", (3,)) and type(out["tuple"]) is tuple
    assert type(out["tuple"][0]) is int and type(out["tuple"][1]) is float
    assert out["list"] == [1, [2, (3, 4)], {}] and type(out["list"][1][1]) is tuple
    assert out["floats"][:2] == [float("inf"), float("-inf")]
    assert out[(1, "a")] == "tuple key"
    assert out["__tuple__"] == "a key that looks like a tag"
    assert out["bytes"] == b"\x00\xff"
    assert [type(v) for v in out["np"]] == [np.int64, np.float32, np.bool_]
    assert out["np"] == state["np"]
    assert math.isnan(roundtrip({"v": float("nan")})["v"])


def test_tensors_arrays_and_rng_states():
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = {
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "numpy_gen": np.random.default_rng(5).bit_generator.state,
        "python_rng": random.getstate(),
        "bf16": torch.randn(3, 4).to(torch.bfloat16),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "view": torch.arange(20.0).reshape(4, 5).t()[1:3],
    }
    out = roundtrip(state)
    assert torch.equal(out["torch_rng"], state["torch_rng"]) and out["torch_rng"].dtype == torch.uint8
    name, keys, pos, has_gauss, cached = out["numpy_rng"]
    assert type(out["numpy_rng"]) is tuple and name == "MT19937"
    assert isinstance(keys, np.ndarray) and keys.dtype == np.uint32
    assert np.array_equal(keys, state["numpy_rng"][1])
    assert (pos, has_gauss, cached) == state["numpy_rng"][2:]
    assert out["numpy_gen"] == state["numpy_gen"]  # 128-bit ints in PCG64 state
    assert out["python_rng"] == state["python_rng"]
    assert out["bf16"].dtype == torch.bfloat16 and torch.equal(out["bf16"], state["bf16"])
    assert out["scalar"].shape == () and out["scalar"].item() == 2.5
    assert torch.equal(out["view"], state["view"])

    # The restored states drive the generators exactly like the originals.
    torch.set_rng_state(out["torch_rng"])
    np.random.set_state(out["numpy_rng"])
    random.setstate(out["python_rng"])
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_shared_and_view_tensors_become_standalone():
    base = torch.arange(100.0)
    state = {"a": base, "again": base, "slice": base[10:20]}
    _, tensors = flatten_state(state)
    ptrs = [t.untyped_storage().data_ptr() for t in tensors.values()]
    assert len(set(ptrs)) == 3
    assert tensors["slice"].untyped_storage().nbytes() == 10 * 4


@pytest.mark.parametrize(
    "value, path",
    [
        ({"a": [1, object()]}, "a/1"),
        ({"opt": {"nt": namedtuple("P", "x")(1)}}, "opt/nt"),
        ({"s": {1, 2}}, "s"),
    ],
)
def test_unsupported_values_name_their_path(value, path):
    with pytest.raises(StateError, match=f"'{path}'"):
        flatten_state(value)


def test_missing_or_unreferenced_tensors_are_errors():
    structure, tensors = flatten_state({"w": torch.ones(2)})
    with pytest.raises(StateError, match="missing tensor 'w'"):
        unflatten_state(structure, {})
    with pytest.raises(StateError, match="not referenced"):
        unflatten_state(structure, {**tensors, "extra": torch.zeros(1)})
