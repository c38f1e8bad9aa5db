"""Write a dataset's events to an events.jsonl file, e.g. those derived from LeRobot annotations.

Resolves events exactly as build-shards does (--events, then <src>/events.jsonl, then the
dataset's own subtask_index / language_persistent annotations and tasks; see
data_tools/annotations.py) and writes them out, so they can be reviewed, edited and passed
back with --events. Works on LeRobot v2.1 and v3.0 datasets.

example:
  python -m data_tools events --src /data/my_lerobot_v21 --out /tmp/events.jsonl
  python -m data_tools events --src /data/my_lerobot --out ev.jsonl --subtask-level L1
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from . import add_verb_parser
from ..annotations import add_event_source_flags


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "events", __doc__)
    p.add_argument("--src", type=Path, required=True, help="LeRobot v2.1 or v3.0 dataset folder")
    p.add_argument("--out", type=Path, required=True, help="events.jsonl file to write")
    add_event_source_flags(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..annotations import resolve_events
    from ..events import write_events
    from ..lerobot import open_dataset

    with open_dataset(args.src) as ds:
        events, source = resolve_events(args.src, ds, args.events, args.subtask_level)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_events(args.out, events)
    counts = Counter(e.level for e in events)
    print(f"wrote {len(events)} events ({dict(sorted(counts.items()))}) from {source} to {args.out}")
    return 0
