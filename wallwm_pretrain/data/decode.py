"""Crude sample -> decoded sample: ``.npy`` members to arrays, the ``json`` member to a dict.

Decoding happens just before cooking (after balance and shuffle), inside the loader's skip
budget: a member that does not decode is one :class:`SampleError` naming the shard, the sample
and the key. Members of other extensions stay bytes (a reader ignores keys it does not know).
"""

from __future__ import annotations

from typing import Any

from wallwm_pretrain.data.cookers import SampleError
from wallwm_pretrain.data.errors import InputError
from wallwm_pretrain.data.npy import load_npy
from wallwm_pretrain.data.textread import load_json


def where(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"


def decode_meta(sample: dict) -> Any:
    """The sample's ``json`` member as an object (already-decoded values pass through)."""
    meta = sample.get("json")
    if isinstance(meta, (bytes, bytearray)):
        meta = load_json(bytes(meta), f"{where(sample)}: key 'json'", SampleError)
    if meta is not None and not isinstance(meta, dict):
        raise SampleError(f"{where(sample)}: key 'json' must hold an object, got {type(meta).__name__}")
    return meta


def decode_sample(sample: dict) -> dict:
    out = dict(sample)
    for key, value in sample.items():
        if key.endswith(".npy") and isinstance(value, (bytes, bytearray)):
            try:
                out[key] = load_npy(bytes(value))
            except InputError as exc:
                raise SampleError(f"{where(sample)}: key '{key}': {exc}") from None
    if "json" in sample:
        out["json"] = decode_meta(sample)
    return out
