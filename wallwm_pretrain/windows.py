"""The windows of unified mode over one episode: the one rule both the loader's cooker
(``wallwm_pretrain/data/unified.py``) and the offline window clustering (``python -m data_tools
cluster-windows``) follow, so that a cluster id written for a window is the id of the window the
loader cooks.

An episode of T control steps whose events tile [0, T) in order is cut into windows anchored
every H_a (``horizon``) steps from the start: window i covers [a, min(T, a + H_a)) with
a = i * H_a (the last one may be shorter). With K control steps per latent frame and M history
latent frames, its history is the M * K steps before the anchor, clamped at the episode start
(step 0 repeated). Its atomic event is the event that covers the most of [a, stop) (ties: the
earlier). Its key is ``<episode key>/w<a>``.

Pure Python and numpy (no torch): the data tools import it without the training stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# the episode json's field with per-window cluster ids, and index.json's record of them
FIELD = "windows"
SPEC_KEYS = ("horizon", "history", "frame_stride")


@dataclass(frozen=True)
class Window:
    index: int  # i: the i-th window of the episode
    anchor: int  # a = i * horizon
    stop: int  # min(T, a + horizon)
    key: str  # "<episode key>/w<a>"
    history: np.ndarray  # int [M * K]: the control steps before the anchor, clamped at 0
    atomic: int  # index of the event covering the most of [anchor, stop)
    current: int  # index of the event in progress at the anchor

    @property
    def length(self) -> int:
        return self.stop - self.anchor


def window_key(episode_key: str, anchor: int) -> str:
    return f"{episode_key}/w{anchor}"


def history_steps(anchor: int, steps: int) -> np.ndarray:
    """The ``steps`` indices before ``anchor``, clamped at 0 (the first repeated)."""
    return np.maximum(np.arange(anchor - steps, anchor), 0)


def atomic_event(events: list[dict], start: int, stop: int) -> int:
    """Index of the event covering the most of [start, stop) (ties: the earlier)."""
    cover = [min(stop, ev["end"]) - max(start, ev["start"]) for ev in events]
    return max(range(len(events)), key=lambda i: (cover[i], -i))


def events_problem(events: Any, steps: int) -> str | None:
    """What is wrong with an episode json's ``events`` for an episode of ``steps`` control steps
    (None: captions and integer spans that tile [0, steps) in order)."""
    if not isinstance(events, list) or not events:
        return "has no 'events' list"
    edge = 0
    for i, ev in enumerate(events):
        ok = (isinstance(ev, dict) and isinstance(ev.get("caption"), str)
              and all(isinstance(ev.get(k), int) and not isinstance(ev.get(k), bool) for k in ("start", "end")))
        if not ok:
            return f"events[{i}] needs a text 'caption' and integer 'start', 'end'"
        if ev["start"] != edge or ev["end"] <= ev["start"]:
            return (f"events[{i}] spans [{ev['start']}, {ev['end']}); the events must tile the episode "
                    f"in order (expected a start of {edge})")
        edge = ev["end"]
    if edge != steps:
        return f"the events end at step {edge}, the sample has {steps} steps"
    return None


def episode_windows(episode_key: str, events: list[dict], steps: int, horizon: int, history_latents: int,
                    frame_stride: int) -> list[Window]:
    """The windows of one episode (see the module docstring); ``events`` must already be valid
    (:func:`events_problem`)."""
    if horizon < 1 or frame_stride < 1 or history_latents < 0:
        raise ValueError(f"horizon ({horizon}) and frame stride ({frame_stride}) must be >= 1, "
                         f"history ({history_latents}) >= 0")
    out = []
    for i, anchor in enumerate(range(0, steps, horizon)):
        stop = min(steps, anchor + horizon)
        out.append(Window(
            index=i, anchor=anchor, stop=stop, key=window_key(episode_key, anchor),
            history=history_steps(anchor, history_latents * frame_stride),
            atomic=atomic_event(events, anchor, stop),
            current=next(j for j, ev in enumerate(events) if ev["start"] <= anchor < ev["end"]),
        ))
    return out


def spec_of(horizon: int, history_latents: int, frame_stride: int) -> dict[str, int]:
    """What a window clustering is for: the identity recorded in the json and index.json."""
    return {"horizon": int(horizon), "history": int(history_latents), "frame_stride": int(frame_stride)}


def describe(spec: dict) -> str:
    return (f"chunk_horizon {spec.get('horizon')}, history_latents {spec.get('history')}, "
            f"frame_stride {spec.get('frame_stride')}")
