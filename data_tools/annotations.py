"""Where a dataset's events come from: our events.jsonl sidecar, or what LeRobot datasets carry.

Order of precedence: ``--events FILE``, then ``<dataset>/events.jsonl``, then the dataset's own
annotations, converted as follows (any subset may be present):

* L3: one event per episode spanning all its frames, captioned with the episode's first task
  (``meta/episodes*`` ``tasks``).
* per-frame ``subtask_index`` column + subtask table (``meta/subtasks.parquet``: subtask string
  as index or ``subtask`` column, and a ``subtask_index`` column; or ``meta/subtasks.jsonl``
  with ``{"subtask_index", "subtask"}`` lines): every run of consecutive frames with the same
  index becomes one event at ``--subtask-level`` (default L2, LeRobot's "subtask"); negative or
  null indices mean "unlabelled" and make no event.
* per-frame ``language_persistent`` column (LeRobot's timestamped language rows
  ``{role, content, style, timestamp, ...}``): a row of style ``subtask`` starts an event at
  ``--subtask-level`` and one of style ``motion`` an L1 event; each lasts until the next row of
  the same style (or the episode end). ``language_events`` rows are instants, not spans, and
  are not read.

Parents are assigned by containment (an event's parent is the event one level up that
encloses it); an event that straddles two parents gets none, which ``validate`` reports.
The trade-off of deriving rather than converting: nothing is copied, but the events are
recomputed on every run (``python -m data_tools events`` writes them out for review).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from .errors import DatasetFormatError
from . import textio
from .events import EVENTS_FILE, LEVELS, PARENT_LEVEL, Event, check_level, read_events
from .lerobot.base import LeRobotDatasetBase, read_parquet

SUBTASK_COLUMN = "subtask_index"
LANGUAGE_COLUMN = "language_persistent"
# language_persistent style -> level (subtask follows --subtask-level).
MOTION_LEVEL = "L1"


def subtask_table(root: Path) -> dict[int, str] | None:
    """subtask_index -> text from meta/subtasks.parquet or meta/subtasks.jsonl, or None."""
    pq_path, jl_path = Path(root) / "meta/subtasks.parquet", Path(root) / "meta/subtasks.jsonl"
    if pq_path.is_file():
        read_parquet(pq_path, "subtask table")
        df = pd.read_parquet(pq_path)
        if SUBTASK_COLUMN not in df.columns:
            raise DatasetFormatError(f"{pq_path}: no {SUBTASK_COLUMN!r} column")
        texts = df["subtask"] if "subtask" in df.columns else df.index
        return {int(i): str(t) for t, i in zip(texts, df[SUBTASK_COLUMN])}
    if jl_path.is_file():
        out = {}
        for lineno, line in textio.lines(jl_path, DatasetFormatError):
            try:
                row = textio.loads(line, f"{jl_path}:{lineno}", DatasetFormatError)
                out[int(row[SUBTASK_COLUMN])] = str(row["subtask"])
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetFormatError(f"{jl_path}:{lineno}: bad subtask line ({exc})") from None
        return out
    return None


def _runs(values: np.ndarray) -> list[tuple[int, int, int]]:
    """(value, start, end) of runs of equal values."""
    if not len(values):
        return []
    cuts = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [len(values)]])
    return [(int(values[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def _subtask_spans(table: pa.Table, names: dict[int, str], ep: int, path: Path):
    col = table[SUBTASK_COLUMN].to_numpy(zero_copy_only=False)
    values = np.array([-1 if v is None or (isinstance(v, float) and np.isnan(v)) else int(v)
                       for v in col], dtype=np.int64)
    spans = []
    for value, start, end in _runs(values):
        if value < 0:
            continue
        if value not in names:
            raise DatasetFormatError(f"episode {ep}: {path} frame {start}: subtask_index {value} "
                                     "is not in the subtask table (meta/subtasks.*)")
        spans.append((start, end, names[value]))
    return spans


def _language_spans(table: pa.Table, fps: float, length: int) -> dict[str, list]:
    """style -> [(start, end, text)] from the persistent language rows of one episode."""
    rows = {}
    for frame_rows in table[LANGUAGE_COLUMN].to_pylist():
        for r in frame_rows or []:
            if r and r.get("style") in ("subtask", "motion") and r.get("timestamp") is not None:
                key = (r["style"], round(float(r["timestamp"]) * fps), r.get("content"))
                rows[key] = r  # the same rows are usually repeated on every frame
    by_style = defaultdict(list)
    for style, frame, content in sorted(rows, key=lambda k: (k[0], k[1])):
        by_style[style].append((min(max(frame, 0), length), content))
    out = {}
    for style, marks in by_style.items():
        spans = []
        for k, (start, content) in enumerate(marks):
            end = marks[k + 1][0] if k + 1 < len(marks) else length
            if content and end > start:
                spans.append((start, end, str(content)))
        out[style] = spans
    return out


def _with_parents(events: list[Event]) -> list[Event]:
    by_level = defaultdict(list)
    for ev in events:
        by_level[(ev.episode_index, ev.level)].append(ev)
    out = []
    for ev in events:
        up = PARENT_LEVEL.get(ev.level)
        parent = next((p.index for p in by_level.get((ev.episode_index, up), [])
                       if p.start <= ev.start and ev.end <= p.end), None)
        out.append(Event(ev.episode_index, ev.level, ev.index, ev.start, ev.end, ev.caption, parent,
                         ev.reasoning))
    return out


def events_from_dataset(ds: LeRobotDatasetBase, subtask_level: str = "L2") -> list[Event]:
    """Events derived from the dataset's own annotations (see the module docstring)."""
    check_level(subtask_level)
    names = subtask_table(ds.root)
    events: list[Event] = []
    for ep, meta in ds.episodes.items():
        spans: dict[str, list] = defaultdict(list)
        spans["L3"].append((0, meta.length, meta.tasks[0] if meta.tasks else ""))
        table, path = ds.episode_table(ep)
        if SUBTASK_COLUMN in table.column_names:
            if names is None:
                raise DatasetFormatError(f"episode {ep}: {path} has a {SUBTASK_COLUMN!r} column "
                                         f"but {ds.root}/meta has no subtasks.parquet or subtasks.jsonl")
            spans[subtask_level] += _subtask_spans(table, names, ep, path)
        if LANGUAGE_COLUMN in table.column_names:
            lang = _language_spans(table, float(ds.fps), meta.length)
            spans[subtask_level] += lang.get("subtask", [])
            spans[MOTION_LEVEL] += lang.get("motion", [])
        for level in LEVELS:
            for i, (start, end, text) in enumerate(sorted(spans.get(level, []))):
                events.append(Event(ep, level, i, start, end, text))
    return _with_parents(events)


def resolve_events(src: Path, ds: LeRobotDatasetBase | None, events_path: Path | None = None,
                   subtask_level: str = "L2", problems: list[str] | None = None
                   ) -> tuple[list[Event], str]:
    """(events, where they came from). ``problems``: collect bad sidecar lines, don't raise."""
    if events_path is not None:
        return read_events(events_path, problems), str(events_path)
    sidecar = Path(src) / EVENTS_FILE
    if sidecar.is_file() or ds is None:
        return read_events(sidecar, problems), str(sidecar)
    events = events_from_dataset(ds, subtask_level)
    return events, (f"the annotations of {src} ({sidecar} not found; read: episode tasks, "
                    f"{SUBTASK_COLUMN}, {LANGUAGE_COLUMN})")


def add_event_source_flags(parser) -> None:
    """--events and --subtask-level, shared by every verb that reads events."""
    parser.add_argument("--events", type=Path, default=None,
                        help="events.jsonl to use instead of <src>/events.jsonl; without either, "
                             "events come from the dataset's own annotations (tasks, "
                             "subtask_index + meta/subtasks.*, language_persistent)")
    parser.add_argument("--subtask-level", default="L2", choices=LEVELS,
                        help="caption level that LeRobot subtask annotations become (default L2)")
