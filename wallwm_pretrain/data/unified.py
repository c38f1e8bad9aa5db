"""Unified mode (``data.mode=unified``): fixed windows over whole episodes, across events.

Episode shards (``python -m data_tools build-episodes``) hold one sample per episode, its
events' spans and captions in the json (``events``). A window is anchored every
H_a = ``data.chunk_horizon`` control steps from the episode start, as in chunk mode (the last
one may be shorter: padded and masked in the batch). With K = ``model.frame_stride`` (latent
frame j goes with control steps [jK, jK + K)) and M = ``data.history_latents``, the window
at anchor a holds:

* the actions, frames and states of steps [a, a + H_a), the state token at step a;
* history: the M latent frames before the anchor, i.e. the frames of steps a - MK .. a - 1
  (pixel path) or the latent frames a/K - M .. a/K - 1 (latent path), clamped at the episode
  start by repeating frame 0 / latent frame 0, so every window has exactly M;
* the atomic instruction: the caption of the event that covers the most of [a, a + H_a)
  (ties: the earlier event), as ``caption`` tokens and, when the shards carry text states,
  that event's row of ``event_states.npy`` as ``caption_states``;
* ``remaining``: steps from a to the end of the event in progress at a;
* ``done``: captions of the events that end at or before a; ``task``: the episode's task;
* ``context``: the text-context source drawn from ``data.context_mix`` with the window's own
  generator (``sample_rng(seed, epoch, "<key>/w<a>")``): the same whoever reads it.

Caption drop does not apply, as in chunk mode. Key ``<episode key>/w<a>``. The windows, their
history steps and atomic events come from ``wallwm_pretrain.windows``, the rule the offline
window clustering (``python -m data_tools cluster-windows``) enumerates with; when the loader
balances per window, each window carries the cluster ids written there (``window_clusters``).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from wallwm_pretrain.captions import encode_caption
from wallwm_pretrain.config import CONTEXT_SOURCES, ConfigError, DataConfig
from wallwm_pretrain.data.cookers import (
    Normalizer, SampleError, TrainSample, check_sample, latent_window, sample_rng,
)
from wallwm_pretrain.data.extras import Extras
from wallwm_pretrain.windows import (
    FIELD, atomic_event, describe, episode_windows, events_problem, history_steps,
)

__all__ = ["atomic_event", "cook_unified", "draw_context", "episode_events", "history_steps", "make_unified_cooker"]

EVENT_STATES = "event_states.npy"
EVENT_STATES_LEN = "event_states_len.npy"


def _where(sample: dict[str, Any]) -> str:
    return f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"


def episode_events(sample: dict[str, Any]) -> list[dict]:
    """The json's ``events``, checked: captions, integer spans that tile [0, T) in order."""
    meta, t = sample["json"], sample["actions.npy"].shape[0]
    events = meta.get("events")
    problem = events_problem(events, t)
    if problem is None:
        return events
    where = f"{_where(sample)}: key 'json'"
    if not isinstance(events, list) or not events:
        raise SampleError(f"{where} {problem}; data.mode=unified reads episode shards "
                          "(python -m data_tools build-episodes)")
    raise SampleError(f"{where}: {problem}")


def draw_context(mix: dict[str, float], rng) -> str:
    """One source, with probability proportional to its weight (zero weights never drawn)."""
    sources = [(s, float(mix.get(s, 0.0))) for s in CONTEXT_SOURCES if mix.get(s, 0.0) > 0]
    u = rng.random() * sum(w for _, w in sources)
    for source, w in sources:
        u -= w
        if u < 0:
            return source
    return sources[-1][0]


def _event_states(sample: dict[str, Any], extras: Extras, n_events: int) -> tuple[np.ndarray, np.ndarray] | None:
    if extras.empty_states is None:
        return None
    states, lengths = sample.get(EVENT_STATES), sample.get(EVENT_STATES_LEN)
    where = _where(sample)
    if not (isinstance(states, np.ndarray) and states.dtype == np.float16 and states.ndim == 3):
        got = "missing" if states is None else f"{getattr(states, 'dtype', type(states).__name__)} {getattr(states, 'shape', '')}"
        raise SampleError(f"{where}: key '{EVENT_STATES}' must be float16 [E, L, D] (index.json records "
                          f"text states), got {got}")
    if not (isinstance(lengths, np.ndarray) and lengths.dtype.kind == "i" and lengths.shape == (n_events,)):
        got = "missing" if lengths is None else f"{getattr(lengths, 'dtype', type(lengths).__name__)} {getattr(lengths, 'shape', '')}"
        raise SampleError(f"{where}: key '{EVENT_STATES_LEN}' must be integers [{n_events}] (one per event), got {got}")
    if states.shape[0] != n_events or states.shape[2] != extras.empty_states.shape[1]:
        raise SampleError(f"{where}: key '{EVENT_STATES}' has shape {list(states.shape)}; expected "
                          f"{n_events} events of width {extras.empty_states.shape[1]}")
    if (lengths < 1).any() or (lengths > states.shape[1]).any():
        raise SampleError(f"{where}: key '{EVENT_STATES_LEN}' holds lengths outside [1, {states.shape[1]}]")
    return states, lengths


def window_clusters(sample: dict[str, Any], windows: list, spec: dict) -> list[tuple[int, int]]:
    """(vl, action) cluster ids of each window, from the json's ``windows`` (written by
    ``data_tools cluster-windows``); SampleError unless they were clustered for ``spec``."""
    rec = sample["json"].get(FIELD)
    where = f"{_where(sample)}: key 'json'"
    if not isinstance(rec, dict):
        raise SampleError(f"{where} has no '{FIELD}' (index.json records window clusters for every "
                          "episode; run python -m data_tools cluster-windows again)")
    if any(rec.get(k) != v for k, v in spec.items()):
        raise SampleError(f"{where}: '{FIELD}' were clustered for {describe(rec)}, index.json for "
                          f"{describe(spec)}; run python -m data_tools cluster-windows again")
    vl, action = rec.get("vl"), rec.get("action")
    ok = all(isinstance(ids, list) and len(ids) == len(windows)
             and all(isinstance(i, int) and not isinstance(i, bool) for i in ids) for ids in (vl, action))
    if not ok:
        raise SampleError(f"{where}: '{FIELD}.vl' and '{FIELD}.action' must list one integer cluster id per "
                          f"window ({len(windows)} windows)")
    return list(zip(vl, action))


def cook_unified(
    sample: dict[str, Any], cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, epoch: int,
    extras: Extras = Extras(), frame_stride: int = 4, clusters_of: dict | None = None,
) -> list[TrainSample]:
    """Unified mode: the windows of one episode sample (see the module docstring). With
    ``clusters_of`` (a window spec, see ``wallwm_pretrain.windows``) each window carries its
    cluster ids from the json's ``windows`` (the loader's per-window balance)."""
    check_sample(sample)
    meta, key = sample["json"], sample["__key__"]
    events = episode_events(sample)
    text = _event_states(sample, extras, len(events))
    t = sample["actions.npy"].shape[0]
    m = cfg.history_latents
    r = extras.latent_stride
    latents = latent_window(sample, 0, t, r) if r else None  # checks the latent count once
    frames = sample["frames.npy"]
    task = meta.get("task", "")
    captions = [encode_caption(ev["caption"], caption_max_bytes) for ev in events]
    windows = episode_windows(key, events, t, cfg.chunk_horizon, m, frame_stride)
    ids = window_clusters(sample, windows, clusters_of) if clusters_of is not None else None
    out = []
    for w in windows:
        start, stop, atom = w.anchor, w.stop, w.atomic
        out.append(
            TrainSample(
                key=w.key,
                frames=frames[start:stop],
                actions=norm.actions(sample["actions.npy"][start:stop]),
                state=norm.state(sample["states.npy"][start]),
                caption=captions[atom],
                meta=meta,
                remaining=events[w.current]["end"] - start,
                latents=latents[start // r: start // r + -(-(stop - start) // r)] if r else None,
                caption_states=None if text is None else text[0][atom, : text[1][atom]],
                history_frames=frames[w.history],
                history_latents=latents[history_steps(start // r, m)] if r else None,
                context=draw_context(cfg.context_mix, sample_rng(cfg.seed, epoch, w.key)),
                task=task,
                done=[ev["caption"] for ev in events if ev["end"] <= start],
                clusters=None if ids is None else ids[w.index],
            )
        )
    return out


def make_unified_cooker(cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, extras: Extras = Extras(),
                        frame_stride: int = 4, clusters_of: dict | None = None):
    """``cooker(sample, epoch=e) -> [TrainSample]``, as ``modes.make_cooker``; ConfigError
    unless ``data.chunk_horizon`` is a multiple of the frame stride (windows start on latent
    frames). ``clusters_of``: see :func:`cook_unified`."""
    if frame_stride < 1 or cfg.chunk_horizon % frame_stride:
        raise ConfigError(f"data.mode=unified needs data.chunk_horizon ({cfg.chunk_horizon}) to be a "
                          f"multiple of model.frame_stride ({frame_stride}): windows start on latent frames")
    if extras.latent_stride and extras.latent_stride != frame_stride:
        raise ConfigError(f"latent stride {extras.latent_stride} differs from model.frame_stride {frame_stride}")
    return functools.partial(cook_unified, cfg=cfg, caption_max_bytes=caption_max_bytes, norm=norm,
                             extras=extras, frame_stride=frame_stride, clusters_of=clusters_of)
