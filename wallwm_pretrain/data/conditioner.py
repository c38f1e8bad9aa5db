"""Conditioner samples (``data.mode=conditioner``): cook and collate.

Conditioner shards (``python -m data_tools build-conditioner``) hold one observation inside an
event per sample: ``json`` (task, done_captions, caption, remaining, clusters, ...),
``observation.npy`` uint8 [V, H, W, C] and ``state.npy`` float32 [S]. Cooking checks the
sample, normalises the state with the event shards' statistics (copied into index.json) and
keeps the caption whole: it is the conditioner's target, never a condition, so caption drop
(``data.caption_drop``) does not apply, and ``text_states`` are always the caption's own
(``caption_states.npy``, whenever index.json records text states). There is no random choice
per sample, so a resumed loader reproduces the same samples without any saved RNG state.

index.json says which kind a folder holds (``"kind": "conditioner"``); the mode registry
(``modes/``) stops a run at start when ``data.mode`` cannot read it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from wallwm_pretrain.batch import ConditionerBatch
from wallwm_pretrain.config import DataConfig
from wallwm_pretrain.data.cookers import Normalizer, SampleError, text_states
from wallwm_pretrain.data.extras import Extras


@dataclass
class ConditionerSample:
    key: str
    observation: np.ndarray  # uint8 [V, H, W, C]
    state: np.ndarray  # float32 [S], normalised
    remaining: int  # control steps to the event's end, >= 1
    task: str
    done: list[str]
    caption: str
    caption_states: np.ndarray | None = None  # float16 [L, D]
    meta: dict[str, Any] = field(default_factory=dict)


def check_conditioner_sample(sample: dict[str, Any]) -> None:
    """Raise :class:`SampleError` unless the crude sample follows the conditioner contract."""
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    for key, dtype, ndim in (("observation.npy", np.uint8, 4), ("state.npy", np.float32, 1)):
        value = sample.get(key)
        if value is None:
            raise SampleError(f"{where}: missing key '{key}' (has {sorted(k for k in sample if not k.startswith('__'))})")
        if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim:
            got = f"{getattr(value, 'dtype', type(value).__name__)} with shape {getattr(value, 'shape', '?')}"
            raise SampleError(f"{where}: key '{key}' must be {np.dtype(dtype).name} with {ndim} dims, got {got}")
    if not np.isfinite(sample["state.npy"]).all():
        raise SampleError(f"{where}: key 'state.npy' contains NaN or inf")
    meta = sample.get("json")
    if not isinstance(meta, dict):
        raise SampleError(f"{where}: key 'json' must hold an object, got {type(meta).__name__}")
    for name in ("caption", "task"):
        if not isinstance(meta.get(name), str):
            raise SampleError(f"{where}: key 'json': '{name}' must be a string, got {type(meta.get(name)).__name__}")
    done = meta.get("done_captions")
    if not isinstance(done, list) or not all(isinstance(c, str) for c in done):
        raise SampleError(f"{where}: key 'json': 'done_captions' must be a list of strings")
    remaining = meta.get("remaining")
    if not isinstance(remaining, int) or isinstance(remaining, bool) or remaining < 1:
        raise SampleError(f"{where}: key 'json': 'remaining' must be an int >= 1, got {remaining!r:.40}")
    if "__balance_error__" in sample:
        raise SampleError(f"{where}: key 'json': {sample['__balance_error__']}")


def cook_conditioner(
    sample: dict[str, Any], cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, epoch: int,
    extras: Extras = Extras(),
) -> list[ConditionerSample]:
    """One conditioner sample per crude sample (``cfg.caption_drop`` is not applied)."""
    check_conditioner_sample(sample)
    meta = sample["json"]
    return [
        ConditionerSample(
            key=sample["__key__"],
            observation=sample["observation.npy"],
            state=norm.state(sample["state.npy"]).astype(np.float32),
            remaining=int(meta["remaining"]),
            task=meta["task"],
            done=list(meta["done_captions"]),
            caption=meta["caption"],
            caption_states=text_states(sample, "caption_states.npy", extras, dropped=False),
            meta=meta,
        )
    ]


def make_conditioner_cooker(cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, extras: Extras = Extras()):
    """``cooker(sample, epoch=e) -> [ConditionerSample]``, as ``modes.make_cooker``."""
    return functools.partial(cook_conditioner, cfg=cfg, caption_max_bytes=caption_max_bytes, norm=norm, extras=extras)


def collate_conditioner(samples: list[ConditionerSample]) -> ConditionerBatch:
    """Stack observations and states; caption states padded to the batch's longest with
    ``text_valid`` marking the real rows."""
    b = len(samples)
    text, valid = None, None
    if all(s.caption_states is not None for s in samples):
        longest = max(len(s.caption_states) for s in samples)
        states = np.zeros((b, longest, samples[0].caption_states.shape[1]), np.float16)
        for i, s in enumerate(samples):
            states[i, : len(s.caption_states)] = s.caption_states
        text = torch.from_numpy(states)
        valid = torch.arange(longest)[None, :] < torch.tensor([len(s.caption_states) for s in samples])[:, None]
    return ConditionerBatch(
        observation=torch.from_numpy(np.stack([s.observation for s in samples])),
        state=torch.from_numpy(np.stack([s.state for s in samples]).astype(np.float32)),
        remaining=torch.tensor([s.remaining for s in samples], dtype=torch.float32),
        lengths=torch.ones(b, dtype=torch.int64),
        task=[s.task for s in samples],
        done=[list(s.done) for s in samples],
        caption=[s.caption for s in samples],
        text_states=text,
        text_valid=valid,
        reasoning=[str(s.meta.get("reasoning", "")) for s in samples],
        keys=[s.key for s in samples],
    )
