"""Cut one training sample per event out of an episode.

A sample is what the model trains on for one event: the observation at the event start, the
event's caption ("next-event description"), and the event's whole video, state and action span.
This module turns one decoded episode plus its events into WebDataset member bytes; checks
that need the decoded data (lengths agree, values finite) live here so that their errors can
name the event they break.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from sim.imageops import resize_area

from .errors import EventError
from .events import Event
from .prune import Pruning, plan_event

# Member order inside a sample is fixed so that shards are byte-identical between runs.
SAMPLE_MEMBERS = ("json", "actions.npy", "state.npy", "states.npy", "frames.npy")


@dataclass
class EpisodeArrays:
    """One decoded episode: per-frame arrays, views in the dataset's fixed order."""
    episode_index: int
    states: np.ndarray  # float32 [N, S]
    actions: np.ndarray  # float32 [N, A]
    frames: np.ndarray  # uint8 [N, V, H, W, C]


@dataclass
class EventContext:
    """What a sample says about its surroundings, resolved from the other events."""
    task: str
    next_caption: str
    parent_caption: str


def sample_key(ev: Event) -> str:
    return f"ep{ev.episode_index:06d}_{ev.level}_{ev.index:03d}"


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def check_lengths(ep: int, n_rows: int, view_frames: dict[str, int], first: Event) -> None:
    """The data table and every camera must have one entry per frame."""
    for key, n in view_frames.items():
        if n != n_rows:
            raise EventError(
                f"episode {ep}: video {key!r} decodes to {n} frames but the data table has "
                f"{n_rows} rows of actions; cannot cut {first.describe()} or any later event "
                "of this episode")


def check_finite(ev: Event, name: str, values: np.ndarray) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=tuple(range(1, values.ndim))))[0])
        raise EventError(f"{ev.describe()}: {name} at frame {ev.start + row} "
                         f"(row {row} of the event) is NaN or infinite")


def shift_frames(frames: np.ndarray, offset: int) -> np.ndarray:
    """frames[t + offset] at position t, repeating the first/last frame at the edges.

    Used to undo a constant video/action offset found by ``sync``; padding keeps every event
    span valid, at the cost of |offset| repeated frames at one end of the episode.
    """
    if offset == 0:
        return frames
    idx = np.clip(np.arange(len(frames)) + offset, 0, len(frames) - 1)
    return frames[idx]


def episode_arrays(ep: int, states: np.ndarray, actions: np.ndarray,
                   frames_by_view: list[np.ndarray], image_size: int, first: Event,
                   view_keys: list[str], video_offset: int = 0) -> EpisodeArrays:
    """Check lengths and stack the resized views: frames become [N, V, H, W, C]."""
    check_lengths(ep, len(actions), {k: len(f) for k, f in zip(view_keys, frames_by_view)}, first)
    if len(states) != len(actions):
        raise EventError(f"episode {ep}: {len(states)} state rows but {len(actions)} action rows")
    views = [resize_area(shift_frames(f, video_offset), image_size) for f in frames_by_view]
    return EpisodeArrays(ep, states.astype(np.float32), actions.astype(np.float32),
                         np.stack(views, axis=1))


def make_sample(ev: Event, arrays: EpisodeArrays, ctx: EventContext, fps: float,
                views: list[str], clusters: tuple[int, int] = (0, 0),
                pruning: Pruning | None = None) -> dict[str, bytes]:
    """Member bytes of one event's sample (see SAMPLE_MEMBERS); with an active ``pruning``
    the quasi-static steps are dropped from every per-step array (see ``prune``)."""
    if ev.end > len(arrays.actions):
        raise EventError(f"{ev.describe()}: span ends after the episode's last frame "
                         f"({len(arrays.actions)} frames)")
    actions = arrays.actions[ev.start:ev.end]
    states = arrays.states[ev.start:ev.end]
    frames = arrays.frames[ev.start:ev.end]
    check_finite(ev, "action", actions)
    check_finite(ev, "state", states)
    plan = plan_event(frames, pruning) if pruning is not None and pruning.active else None
    if plan is not None and len(plan.keep) < len(frames):
        actions, states, frames = actions[plan.keep], states[plan.keep], frames[plan.keep]
    meta = {
        "episode_id": ev.episode_index, "event_index": ev.index, "level": ev.level,
        "caption": ev.caption, "next_caption": ctx.next_caption,
        "parent_caption": ctx.parent_caption, "task": ctx.task,
        "start": ev.start, "end": ev.end, "length": ev.end - ev.start, "fps": fps,
        "vl_cluster": int(clusters[0]), "action_cluster": int(clusters[1]),
        "views": list(views),
    }
    if ev.reasoning is not None:  # the dataset's own trace (events.jsonl); absent otherwise
        meta["reasoning"] = ev.reasoning
    if plan is not None:
        meta.update(plan.meta(ev.end - ev.start))
    return {
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
        "actions.npy": npy_bytes(actions),
        "state.npy": npy_bytes(states[0]),
        "states.npy": npy_bytes(states),
        "frames.npy": npy_bytes(frames),
    }


def event_contexts(level_events: list[Event], by_level: dict[str, list[Event]],
                   fallback_task: str) -> dict[int, EventContext]:
    """next_caption, parent_caption and task for each event of one episode and level."""
    up = {"L2": "L3", "L1": "L2", "L0": "L1"}.get(level_events[0].level) if level_events else None
    parents = by_level.get(up, []) if up else []
    l3 = by_level.get("L3", [])
    task = l3[0].caption if l3 else fallback_task
    out = {}
    for k, ev in enumerate(level_events):
        nxt = level_events[k + 1].caption if k + 1 < len(level_events) else ""
        parent = next((p for p in parents if p.index == ev.parent), None) if ev.parent is not None else None
        if parent is None:  # no explicit parent: use the enclosing event one level up
            parent = next((p for p in parents if p.start <= ev.start and ev.end <= p.end), None)
        out[ev.index] = EventContext(task, nxt, parent.caption if parent else "")
    return out
