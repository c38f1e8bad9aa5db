"""Check a dataset's events (and optionally its decoded data) and list every problem found.

Unlike build-shards, which stops at the first fatal problem, this keeps going and returns all
of them, each tied to its episode and event, so that an annotation file can be fixed in one
pass. Errors are what build-shards would refuse or what breaks the caption hierarchy: a span
outside its episode, an event not inside its parent (L0 in L1 in L2 in L3), two events of one
level overlapping, an unreadable line, undecodable or short video, NaN in actions. Warnings
are what is legal but suspicious: events shorter than ``min_length`` frames, indices not in
time order, episodes without events.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .annotations import resolve_events
from .errors import DataToolsError
from .events import PARENT_LEVEL, Event, group_events
from .lerobot import open_dataset
from .lerobot.layout import ACTION_KEY, STATE_KEY


@dataclass
class Problem:
    severity: str  # "error" or "warning"
    code: str
    message: str
    episode: int | None = None
    level: str | None = None
    index: int | None = None

    def line(self) -> str:
        return f"{self.severity.upper():<7} [{self.code}] {self.message}"


def _err(code: str, ev: Event | None, msg: str, severity: str = "error") -> Problem:
    if ev is None:
        return Problem(severity, code, msg)
    return Problem(severity, code, f"{ev.describe()}: {msg}", ev.episode_index, ev.level, ev.index)


def check_events(events: list[Event], lengths: dict[int, int], min_length: int) -> list[Problem]:
    """Span, nesting, overlap and length checks; every problem, not just the first."""
    out: list[Problem] = []
    for ev in events:
        if ev.episode_index not in lengths:
            out.append(_err("unknown-episode", ev, f"the dataset has no episode {ev.episode_index}"))
            continue
        n = lengths[ev.episode_index]
        if ev.start < 0 or ev.end > n:
            out.append(_err("outside-episode", ev, f"span lies outside the episode "
                                                   f"(episode {ev.episode_index} has frames [0, {n}))"))
        if ev.length < min_length:
            out.append(_err("too-short", ev, f"{ev.length} frame(s), below the minimum of "
                                             f"{min_length}", "warning"))
    for ep, levels in sorted(group_events(events).items()):
        for level, evs in sorted(levels.items()):
            by_time = sorted(evs, key=lambda e: (e.start, e.index))
            if [e.index for e in by_time] != [e.index for e in evs]:
                out.append(Problem("warning", "index-order", f"episode {ep}: {level} event indices "
                                   "are not in time order", ep, level))
            reach = None  # the event reaching furthest so far
            for ev in by_time:
                if reach is not None and ev.start < reach.end:
                    out.append(_err("overlap", ev, f"overlaps {level} event {reach.index} "
                                                   f"(frames [{reach.start}, {reach.end}))"))
                if reach is None or ev.end > reach.end:
                    reach = ev
            up = PARENT_LEVEL.get(level)
            parents = {p.index: p for p in levels.get(up, [])} if up else {}
            for ev in evs:
                out.extend(_check_parent(ev, up, parents))
    for ep in sorted(set(lengths) - {e.episode_index for e in events}):
        out.append(Problem("warning", "no-events", f"episode {ep} has no events", ep))
    return out


def _check_parent(ev: Event, up: str | None, parents: dict[int, Event]) -> list[Problem]:
    if up is None or not parents:
        return []  # L3, or the parent level is not annotated in this episode
    if ev.parent is not None:
        p = parents.get(ev.parent)
        if p is None:
            return [_err("missing-parent", ev, f"parent {up} event {ev.parent} not found")]
        if ev.start < p.start or ev.end > p.end:
            return [_err("outside-parent", ev, f"not inside its parent {up} event {p.index} "
                                               f"(frames [{p.start}, {p.end}))")]
        return []
    if not any(p.start <= ev.start and ev.end <= p.end for p in parents.values()):
        return [_err("outside-parent", ev, f"not inside any {up} event")]
    return []


def check_decoded(ds, episodes: list[int]) -> list[Problem]:
    """Decode each episode: every camera must give one frame per row; values must be finite."""
    out = []
    for ep in episodes:
        try:
            cols = ds.read_columns(ep, [STATE_KEY, ACTION_KEY])
            for key, values in cols.items():
                bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
                if len(bad):
                    out.append(Problem("error", "not-finite", f"episode {ep}: {key!r} is NaN or "
                                       f"infinite at frame(s) {bad[:5].tolist()}", ep))
            n = ds.episodes[ep].length
            for key in ds.video_keys:
                got = len(ds.read_frames(ep, key))
                if got != n:
                    path = ds.video_range(ep, key)[0]
                    out.append(Problem("error", "video-length", f"episode {ep}, camera {key!r}: "
                                       f"{path} decodes to {got} frames, the episode has {n}", ep))
        except DataToolsError as exc:
            out.append(Problem("error", "unreadable", str(exc), ep))
    return out


def validate(src: Path, events_path: Path | None = None, subtask_level: str = "L2",
             min_length: int = 2, decode: bool = False) -> dict:
    """The report as a dict: source, counts, problems (list of Problem dicts)."""
    parse_problems: list[str] = []
    with open_dataset(src) as ds:
        events, source = resolve_events(src, ds, events_path, subtask_level, parse_problems)
        lengths = {ep: m.length for ep, m in ds.episodes.items()}
        problems = [Problem("error", "bad-line", msg) for msg in parse_problems]
        problems += check_events(events, lengths, min_length)
        if decode:
            problems += check_decoded(ds, sorted(lengths))
    per_level = defaultdict(int)
    for ev in events:
        per_level[ev.level] += 1
    return {
        "source": str(src), "events_from": source, "layout": ds.layout,
        "episodes": len(lengths), "events": len(events), "events_per_level": dict(sorted(per_level.items())),
        "errors": sum(p.severity == "error" for p in problems),
        "warnings": sum(p.severity == "warning" for p in problems),
        "problems": [asdict(p) for p in problems],
    }


def format_report(report: dict) -> str:
    lines = [f"validate {report['source']} (LeRobot {report['layout']}): {report['events']} events "
             f"{report['events_per_level']} in {report['episodes']} episodes, "
             f"from {report['events_from']}"]
    lines += [Problem(**p).line() for p in report["problems"]]
    lines.append(f"{report['errors']} error(s), {report['warnings']} warning(s)")
    return "\n".join(lines)
