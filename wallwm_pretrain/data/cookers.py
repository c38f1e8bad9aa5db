"""Cookers: crude WebDataset samples -> typed training samples.

Shards stay crude on disk (a dict of decoded keys, see DESIGN.md for the contract). A cooker
checks one crude sample, then cuts it into what the model trains on:

- :func:`cook_event` (event mode): the whole event, conditioned on its caption (the next-event
  description); events longer than ``data.max_frames`` are cropped at a random start.
- :func:`cook_chunks` (chunk mode, the baseline): fixed windows of H_a control steps tiled over
  the sample, each conditioned on the task instruction (the same text for every window).
- ``unified.cook_unified`` (unified mode): chunk-mode windows over whole episodes with history
  before the anchor and the caption of the event each window mostly covers (``unified.py``).

Which cooker a run uses is the data mode's decision (``modes/``, ``modes.make_cooker``).

Each cooked sample also carries ``remaining``: control steps from its first step to the end of
the crude sample, the target of the model's remaining-time head.

Randomness per sample (crop start, caption drop) comes from a generator seeded by
(seed, epoch, sample key), so a sample is cooked the same way whatever worker or rank reads it
and a resumed run reproduces it without saving any RNG state.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wallwm_pretrain.config import DataConfig
from wallwm_pretrain.captions import encode_caption
from wallwm_pretrain.data.captions import drops
from wallwm_pretrain.data.errors import InputError
from wallwm_pretrain.data.extras import Extras

REQUIRED_KEYS = {
    "json": None,
    "actions.npy": (np.float32, 2),
    "state.npy": (np.float32, 1),
    "states.npy": (np.float32, 2),
    "frames.npy": (np.uint8, 5),
}


class SampleError(InputError):
    """A crude sample does not follow the shard contract; names shard, sample and key."""


@dataclass
class TrainSample:
    key: str
    frames: np.ndarray  # uint8 [T, V, H, W, C]
    actions: np.ndarray  # float32 [T, A], normalised
    state: np.ndarray  # float32 [S], normalised
    caption: np.ndarray  # int64 tokens
    meta: dict[str, Any] = field(default_factory=dict)
    remaining: int = 0  # control steps from the first step to the end of the crude sample's event
    latents: np.ndarray | None = None  # float16 [ceil(T / K), V, Z, h, w] (Extras.latent_stride)
    caption_states: np.ndarray | None = None  # float16 [L, D] (Extras.empty_states)
    # unified mode (``unified.py``); None / empty otherwise
    history_frames: np.ndarray | None = None  # uint8 [M * K, V, H, W, C]: steps before the anchor
    history_latents: np.ndarray | None = None  # float16 [M, V, Z, h, w]: latent frames before it
    context: str = ""  # text-context source: atomic | global | staircase
    task: str = ""
    done: list[str] = field(default_factory=list)  # captions of the events finished by the anchor
    clusters: tuple[int, int] | None = None  # (vl, action) of the window, when balanced per window

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])


@dataclass
class Normalizer:
    """Per-dimension standardisation of actions and states (statistics from index.json)."""

    action_mean: np.ndarray | None = None
    action_std: np.ndarray | None = None
    state_mean: np.ndarray | None = None
    state_std: np.ndarray | None = None

    @classmethod
    def from_index(cls, index: dict) -> "Normalizer":
        stats = index.get("stats") or {}
        arr = lambda part, k: None if part not in stats else np.asarray(stats[part][k], np.float32)  # noqa: E731
        return cls(arr("action", "mean"), arr("action", "std"), arr("state", "mean"), arr("state", "std"))

    def actions(self, x: np.ndarray) -> np.ndarray:
        if self.action_mean is None:
            return x
        return (x - self.action_mean) / np.maximum(self.action_std, 1e-6)

    def state(self, x: np.ndarray) -> np.ndarray:
        if self.state_mean is None:
            return x
        return (x - self.state_mean) / np.maximum(self.state_std, 1e-6)

    def raw_actions(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`actions`: normalised model outputs -> the robot's units."""
        if self.action_mean is None:
            return x
        return x * np.maximum(self.action_std, 1e-6) + self.action_mean


def check_sample(sample: dict[str, Any]) -> None:
    """Raise :class:`SampleError` unless the crude sample follows the shard contract."""
    where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
    for key, spec in REQUIRED_KEYS.items():
        if key not in sample:
            raise SampleError(f"{where}: missing key '{key}' (has {sorted(k for k in sample if not k.startswith('__'))})")
        if spec is None:
            continue
        dtype, ndim = spec
        value = sample[key]
        if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim:
            got = f"{getattr(value, 'dtype', type(value).__name__)} with shape {getattr(value, 'shape', '?')}"
            raise SampleError(f"{where}: key '{key}' must be {np.dtype(dtype).name} with {ndim} dims, got {got}")
    meta = sample["json"]
    if not isinstance(meta, dict):
        raise SampleError(f"{where}: key 'json' must hold an object, got {type(meta).__name__}")
    for name in ("caption", "task"):
        if name in meta and not isinstance(meta[name], str):
            raise SampleError(f"{where}: key 'json': '{name}' must be a string, got {type(meta[name]).__name__}")
    if "caption" not in meta:
        raise SampleError(f"{where}: key 'json' has no 'caption'")
    if "__balance_error__" in sample:
        raise SampleError(f"{where}: key 'json': {sample['__balance_error__']}")
    t = sample["actions.npy"].shape[0]
    if sample["frames.npy"].shape[0] != t or sample["states.npy"].shape[0] != t:
        raise SampleError(
            f"{where}: lengths differ: actions {t}, frames {sample['frames.npy'].shape[0]}, "
            f"states {sample['states.npy'].shape[0]}"
        )
    if t == 0:
        raise SampleError(f"{where}: empty event (0 steps)")
    for key in ("actions.npy", "state.npy", "states.npy"):
        if not np.isfinite(sample[key]).all():
            raise SampleError(f"{where}: key '{key}' contains NaN or inf")


def _member(sample: dict[str, Any], key: str, ndim: int) -> np.ndarray:
    value = sample.get(key)
    if not isinstance(value, np.ndarray) or value.dtype != np.float16 or value.ndim != ndim:
        where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
        got = "missing" if value is None else f"{getattr(value, 'dtype', type(value).__name__)} {getattr(value, 'shape', '')}"
        raise SampleError(f"{where}: key '{key}' must be float16 with {ndim} dims (index.json records it), got {got}")
    return value


def latent_window(sample: dict[str, Any], start: int, stop: int, stride: int) -> np.ndarray:
    """Latent frames of control steps [start, stop) (``start`` a multiple of ``stride``)."""
    latents = _member(sample, "latents.npy", 5)
    t = sample["actions.npy"].shape[0]
    if latents.shape[0] != -(-t // stride):
        raise SampleError(
            f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}: key 'latents.npy' has "
            f"{latents.shape[0]} latent frames, {t} steps need ceil({t} / {stride}) = {-(-t // stride)}"
        )
    return latents[start // stride: start // stride + -(-(stop - start) // stride)]


def text_states(sample: dict[str, Any], key: str, extras: Extras, dropped: bool) -> np.ndarray | None:
    if extras.empty_states is None:
        return None
    states = _member(sample, key, 2)
    if states.shape[1] != extras.empty_states.shape[1]:
        raise SampleError(f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}: key "
                          f"'{key}' has width {states.shape[1]}, the empty states {extras.empty_states.shape[1]}")
    return extras.empty_states if dropped else states


def sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    # random.Random seeds in microseconds where a numpy Generator takes tens: this runs per sample
    return random.Random((seed * 1_000_003 + epoch) * 4_294_967_296 + zlib.crc32(key.encode()))


def cook_event(
    sample: dict[str, Any], cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, epoch: int,
    extras: Extras = Extras(),
) -> list[TrainSample]:
    """Event mode: one training sample per event (cropped to ``cfg.max_frames``; with latents
    the crop starts on a latent frame, i.e. at a multiple of the latent stride)."""
    check_sample(sample)
    meta, key = sample["json"], sample["__key__"]
    rng = sample_rng(cfg.seed, epoch, key)
    t = sample["actions.npy"].shape[0]
    r = extras.latent_stride
    if r:
        start = r * rng.randrange((t - cfg.max_frames) // r + 1) if t > cfg.max_frames else 0
    else:
        start = rng.randrange(t - cfg.max_frames + 1) if t > cfg.max_frames else 0
    stop = min(t, start + cfg.max_frames)
    caption = encode_caption(meta["caption"], caption_max_bytes)
    dropped = drops(t, cfg.caption_drop, rng)
    return [
        TrainSample(
            key=key,
            frames=sample["frames.npy"][start:stop],
            actions=norm.actions(sample["actions.npy"][start:stop]),
            state=norm.state(sample["states.npy"][start]),
            caption=caption[:1].copy() if dropped else caption,
            meta=meta,
            remaining=t - start,
            latents=latent_window(sample, start, stop, r) if r else None,
            caption_states=text_states(sample, "caption_states.npy", extras, dropped),
        )
    ]


def cook_chunks(
    sample: dict[str, Any], cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, epoch: int,
    extras: Extras = Extras(),
) -> list[TrainSample]:
    """Chunk mode: windows of ``cfg.chunk_horizon`` steps, each conditioned on the task instruction.

    The last window of a sample may be shorter (it is padded and masked in the batch).
    """
    check_sample(sample)
    meta, key = sample["json"], sample["__key__"]
    t = sample["actions.npy"].shape[0]
    task = encode_caption(meta.get("task", ""), caption_max_bytes)
    task_states = text_states(sample, "task_states.npy", extras, False)
    r = extras.latent_stride  # chunk_horizon is a multiple of it: windows start on latent frames
    horizon = cfg.chunk_horizon
    out = []
    for start in range(0, t, horizon):
        stop = min(t, start + horizon)
        out.append(
            TrainSample(
                key=f"{key}/w{start}",
                frames=sample["frames.npy"][start:stop],
                actions=norm.actions(sample["actions.npy"][start:stop]),
                state=norm.state(sample["states.npy"][start]),
                caption=task,
                meta=meta,
                remaining=t - start,
                latents=latent_window(sample, start, stop, r) if r else None,
                caption_states=task_states,
            )
        )
    return out
