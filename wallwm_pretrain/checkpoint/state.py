"""Nested training state <-> (JSON structure, flat tensor dict), with no pickle.

Optimizer ``state_dict()`` results and trainer state (step counters, data-loader state, RNG
states of torch, CUDA, numpy and ``random``) are trees of dicts, lists, tuples, scalars,
strings, numpy arrays and tensors. :func:`flatten_state` splits such a tree into a JSON-able
structure, where each tensor or array is replaced by a reference, and a flat ``name -> tensor``
dict that goes into a safetensors file. :func:`unflatten_state` rebuilds the tree exactly:
tuples stay tuples, ints stay ints (of any size), int dict keys stay ints, non-finite floats
survive, tensors keep dtype and shape, numpy arrays come back as numpy arrays.

Encoding: plain JSON values and lists stand for themselves. Every other value is a JSON object
with exactly one key naming its kind (``__tuple__``, ``__dict__``, ``__tensor__`` ...). A dict
whose keys are all strings, none of them a tag name, is written as a plain JSON object so that
the file stays readable; any other dict is written as ``{"__dict__": [[key, value], ...]}``.

Trade-off: only exact built-in types are accepted (a namedtuple, an enum or an arbitrary object
raises :class:`StateError` naming its path) because anything else could not be rebuilt without
pickle. Tensors that were the same object, or shared storage, come back as separate tensors.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import torch

TAG_TENSOR = "__tensor__"
TAG_NDARRAY = "__ndarray__"
TAG_TUPLE = "__tuple__"
TAG_DICT = "__dict__"
TAG_FLOAT = "__float__"
TAG_BYTES = "__bytes__"
TAG_NPSCALAR = "__npscalar__"
TAG_BYTESIO = "__bytesio__"
TAGS = frozenset(
    {TAG_TENSOR, TAG_NDARRAY, TAG_TUPLE, TAG_DICT, TAG_FLOAT, TAG_BYTES, TAG_NPSCALAR, TAG_BYTESIO}
)


class StateError(ValueError):
    """A value that cannot be stored, or a stored structure that cannot be rebuilt."""


def standalone_tensor(t: torch.Tensor) -> torch.Tensor:
    """A CPU tensor that owns exactly its own contiguous storage.

    safetensors refuses tensors that share storage (tied weights) and a view must not drag the
    rest of its base storage along, so anything that is not already a compact, unshared CPU
    tensor is copied. Plain CPU parameters are passed through without a copy.
    """
    t = t.detach()
    if t.device.type != "cpu":
        # The device-to-host copy already produces a fresh, compact tensor.
        return t.to("cpu").contiguous()
    compact = (
        t.is_contiguous()
        and t.storage_offset() == 0
        and t.untyped_storage().nbytes() == t.numel() * t.element_size()
    )
    return t if compact else t.contiguous().clone()


def dedupe_storage(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Clone every tensor whose storage is already used by an earlier entry (tied weights)."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if t.numel():
            seen.add(ptr)
        out[name] = t
    return out


def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


class _Flattener:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def _name(self, path: str) -> str:
        # Names follow the structure (readable, stable for later resharding); a clash such as
        # the int key 0 next to the str key "0" gets a numeric suffix.
        name = path or "root"
        n = 1
        while name in self.tensors:
            name = f"{path or 'root'}#{n}"
            n += 1
        return name

    def encode(self, value: Any, path: str) -> Any:
        kind = type(value)
        if value is None or kind in (bool, str, int):
            return value
        if kind is float:
            if math.isfinite(value):
                return value
            return {TAG_FLOAT: repr(value)}  # 'nan', 'inf', '-inf': JSON has no literal
        if kind is list:
            return [self.encode(v, _join(path, i)) for i, v in enumerate(value)]
        if kind is tuple:
            return {TAG_TUPLE: [self.encode(v, _join(path, i)) for i, v in enumerate(value)]}
        if kind is dict:
            if all(type(k) is str for k in value) and not (TAGS & value.keys()):
                return {k: self.encode(v, _join(path, k)) for k, v in value.items()}
            return {
                TAG_DICT: [
                    [self.encode(k, _join(path, "<key>")), self.encode(v, _join(path, k))]
                    for k, v in value.items()
                ]
            }
        if isinstance(value, torch.Tensor):
            if kind not in (torch.Tensor, torch.nn.Parameter):
                raise StateError(f"state at '{path}': tensor subclass {kind.__name__} is not supported")
            name = self._name(path)
            self.tensors[name] = standalone_tensor(value)
            return {TAG_TENSOR: name}
        if kind is np.ndarray:
            if value.dtype.kind not in "biuf" or value.dtype.byteorder == ">":
                raise StateError(f"state at '{path}': numpy dtype {value.dtype} is not supported")
            name = self._name(path)
            self.tensors[name] = torch.from_numpy(np.ascontiguousarray(value)).clone()
            return {TAG_NDARRAY: name}
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return {TAG_NPSCALAR: [value.dtype.str, self.encode(value.item(), path)]}
        if kind is bytes:
            return {TAG_BYTES: base64.b64encode(value).decode("ascii")}
        if kind is io.BytesIO:  # Transformer Engine's _extra_state
            return {TAG_BYTESIO: base64.b64encode(value.getvalue()).decode("ascii")}
        raise StateError(
            f"state at '{path}': values of type {kind.__module__}.{kind.__qualname__} cannot be "
            "stored (allowed: dict, list, tuple, None, bool, int, float, str, bytes, "
            "io.BytesIO, torch.Tensor, numpy arrays and scalars)"
        )


def flatten_state(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state into a JSON-able structure and a flat tensor dict.

    Args:
        state: a tree of dict/list/tuple/None/bool/int/float/str/bytes, tensors and numpy
            arrays or scalars (e.g. an optimizer ``state_dict()`` or RNG states).

    Returns:
        ``(structure, tensors)``: ``structure`` can be passed to ``json.dumps`` (with
        ``allow_nan=False``); ``tensors`` maps reference names to standalone CPU tensors.

    Raises:
        StateError: a value of an unsupported type, naming its path in the tree.
    """
    flat = _Flattener()
    structure = flat.encode(state, "")
    return structure, dedupe_storage(flat.tensors)


def _decode(node: Any, tensors: dict[str, torch.Tensor], used: set[str]) -> Any:
    if node is None or type(node) in (bool, int, float, str):
        return node
    if type(node) is list:
        return [_decode(v, tensors, used) for v in node]
    if type(node) is not dict:
        raise StateError(f"unexpected JSON value of type {type(node).__name__}")
    if len(node) == 1:
        (tag, body), = node.items()
        if tag in (TAG_TENSOR, TAG_NDARRAY):
            if body not in tensors:
                raise StateError(f"missing tensor '{body}'")
            used.add(body)
            t = tensors[body]
            return t.numpy() if tag == TAG_NDARRAY else t
        if tag == TAG_TUPLE:
            return tuple(_decode(v, tensors, used) for v in body)
        if tag == TAG_DICT:
            return {_decode(k, tensors, used): _decode(v, tensors, used) for k, v in body}
        if tag == TAG_FLOAT:
            return float(body)
        if tag == TAG_BYTES:
            return base64.b64decode(body)
        if tag == TAG_BYTESIO:
            return io.BytesIO(base64.b64decode(body))
        if tag == TAG_NPSCALAR:
            dtype, value = body
            return np.dtype(dtype).type(_decode(value, tensors, used))
    return {k: _decode(v, tensors, used) for k, v in node.items()}


def unflatten_state(structure: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild the tree produced by :func:`flatten_state`.

    Args:
        structure: the JSON structure (as loaded by ``json.loads``).
        tensors: the flat tensor dict (as loaded from safetensors).

    Returns:
        The original nested state.

    Raises:
        StateError: a reference to a tensor that is not in ``tensors``, a tensor that nothing
            refers to, or a malformed structure.
    """
    used: set[str] = set()
    state = _decode(structure, tensors, used)
    unused = sorted(set(tensors) - used)
    if unused:
        raise StateError(f"tensors not referenced by the structure: {unused[:5]}")
    return state
