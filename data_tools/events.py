"""Events: the ``events.jsonl`` sidecar that names spans of each episode.

One JSON object per line and per event::

    {"episode_index": 3, "level": "L1", "index": 2, "start": 17, "end": 24,
     "caption": "lift the red cube", "parent": 0}

``start``/``end`` are frame indices within the episode (end exclusive); ``index`` orders the
events of one episode and level; ``parent`` is the index of the enclosing event one level up
(L1 -> L2 -> L3), or null. An optional ``reasoning`` (text) is the dataset's own reasoning
trace for the event; ``build-conditioner`` uses it in place of the trace it writes from the event
hierarchy (``data_tools/reasoning.py``). The file lives beside ``meta/`` so that a LeRobot dataset stays
readable by LeRobot itself. Checks here are strict on what shard building relies on (types,
known levels, spans inside the episode) and leave softer checks (nesting, overlap) to
``check_nesting`` so that real, less tidy annotations can still be imported.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .errors import EventError
from . import textio

EVENTS_FILE = "events.jsonl"
# L3 task, L2 subtask, L1 action primitive, L0 segment (paper's caption hierarchy).
LEVELS = ("L3", "L2", "L1", "L0")
PARENT_LEVEL = {"L2": "L3", "L1": "L2", "L0": "L1"}


@dataclass(frozen=True)
class Event:
    episode_index: int
    level: str
    index: int
    start: int
    end: int
    caption: str
    parent: int | None = None
    reasoning: str | None = None

    @property
    def length(self) -> int:
        return self.end - self.start

    def describe(self) -> str:
        """Short human reference used in error messages."""
        return (f"episode {self.episode_index}, {self.level} event {self.index} "
                f"({self.caption!r}, frames [{self.start}, {self.end}))")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise EventError(f"unknown caption level {level!r} (known levels: {', '.join(LEVELS)})")
    return level


def _parse_line(line: str, lineno: int, path: Path) -> Event:
    where = f"{path}:{lineno}"
    obj = textio.loads(line, where, EventError)
    if not isinstance(obj, dict):
        raise EventError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in ("episode_index", "level", "index", "start", "end", "caption")
               if k not in obj]
    if missing:
        raise EventError(f"{where}: missing field(s) {', '.join(missing)}")
    ints = ("episode_index", "index", "start", "end")
    bad = [k for k in ints if not isinstance(obj[k], int) or isinstance(obj[k], bool)]
    if bad:
        raise EventError(f"{where} (episode {obj.get('episode_index')}, event {obj.get('index')})"
                         f": field(s) {', '.join(bad)} must be integers")
    parent = obj.get("parent")
    if parent is not None and (not isinstance(parent, int) or isinstance(parent, bool)):
        raise EventError(f"{where}: parent must be an integer or null")
    if obj["level"] not in LEVELS:
        raise EventError(f"{where} (episode {obj['episode_index']}, event {obj['index']}): "
                         f"unknown level {obj['level']!r} (known levels: {', '.join(LEVELS)})")
    if not isinstance(obj["caption"], str):
        raise EventError(f"{where}: caption must be a string")
    reasoning = obj.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, str):
        raise EventError(f"{where}: reasoning must be a string or null")
    ev = Event(obj["episode_index"], obj["level"], obj["index"], obj["start"], obj["end"],
               obj["caption"], parent, reasoning)
    if ev.end <= ev.start:
        raise EventError(f"{where}: {ev.describe()} is empty or reversed (end <= start)")
    return ev


def read_events(path: Path, problems: list[str] | None = None) -> list[Event]:
    """Parse ``events.jsonl``; raises EventError naming the line, episode and event.

    With a ``problems`` list, a bad line is recorded there and skipped instead, so that
    ``validate`` can report every problem of a file in one run.
    """
    path = Path(path)
    if not path.is_file():
        raise EventError(f"{path} not found: the events sidecar (one JSON object per event, "
                         "see data_tools/events.py) is required")
    events, seen = [], set()
    for lineno, line in textio.lines(path, EventError):
        try:
            ev = _parse_line(line, lineno, path)
            key = (ev.episode_index, ev.level, ev.index)
            if key in seen:
                raise EventError(f"{path}:{lineno}: duplicate {ev.describe()}")
        except EventError as exc:
            if problems is None:
                raise
            problems.append(str(exc))
            continue
        seen.add(key)
        events.append(ev)
    return events


def write_events(path: Path, events: Iterable[Event]) -> None:
    with Path(path).open("w", encoding="utf-8") as fh:
        for ev in events:
            row = asdict(ev)
            if row["reasoning"] is None:  # optional: written only when the event has one
                del row["reasoning"]
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def group_events(events: Iterable[Event]) -> dict[int, dict[str, list[Event]]]:
    """episode -> level -> events sorted by index."""
    out: dict[int, dict[str, list[Event]]] = defaultdict(lambda: defaultdict(list))
    for ev in events:
        out[ev.episode_index][ev.level].append(ev)
    for levels in out.values():
        for evs in levels.values():
            evs.sort(key=lambda e: e.index)
    return out


def check_spans(events: Iterable[Event], lengths: Mapping[int, int]) -> None:
    """Every event must lie in a known episode and inside its frame range."""
    for ev in events:
        if ev.episode_index not in lengths:
            raise EventError(f"{ev.describe()}: the dataset has no episode {ev.episode_index}")
        n = lengths[ev.episode_index]
        if ev.start < 0 or ev.end > n:
            raise EventError(f"{ev.describe()}: span lies outside the episode "
                             f"(episode {ev.episode_index} has frames [0, {n}))")


def check_nesting(events: Iterable[Event]) -> None:
    """Within a level no two events overlap; each event with a parent lies inside it."""
    for ep, levels in group_events(events).items():
        for level, evs in levels.items():
            for a, b in zip(evs, evs[1:]):
                if b.start < a.end:
                    raise EventError(f"{b.describe()} overlaps {level} event {a.index} "
                                     f"(frames [{a.start}, {a.end}))")
            up = PARENT_LEVEL.get(level)
            parents = {p.index: p for p in levels.get(up, [])} if up else {}
            for ev in evs:
                if ev.parent is None:
                    continue
                p = parents.get(ev.parent)
                if p is None:
                    raise EventError(f"{ev.describe()}: parent {up} event {ev.parent} not found")
                if ev.start < p.start or ev.end > p.end:
                    raise EventError(f"{ev.describe()} is not inside its parent {up} event "
                                     f"{p.index} (frames [{p.start}, {p.end}))")
