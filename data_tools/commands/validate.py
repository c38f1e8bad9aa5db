"""Check a dataset's events: spans, nesting, overlaps, lengths; optionally decode everything.

Lists every problem with its episode and event (not just the first), then a count. Errors:
span outside the episode, event not inside its parent (L0 in L1 in L2 in L3), overlap within a
level, bad events.jsonl line, and with --decode: unreadable or short video, unreadable parquet,
NaN/inf in state or action. Warnings: events shorter than --min-length, indices out of time
order, episodes without events. Exit code 1 when there is an error (or, with --strict, a
warning), else 0. Reads LeRobot v2.1 and v3.0 datasets.

example:
  python -m data_tools validate --src data/synth/smoke
  python -m data_tools validate --src /data/my_lerobot_v21 --events my_events.jsonl --decode --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_verb_parser
from ..annotations import add_event_source_flags


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "validate", __doc__)
    p.add_argument("--src", type=Path, required=True, help="LeRobot v2.1 or v3.0 dataset folder")
    add_event_source_flags(p)
    p.add_argument("--min-length", type=int, default=2,
                   help="events shorter than this many frames are flagged (warning) (default 2)")
    p.add_argument("--decode", action="store_true",
                   help="also read every parquet file and decode every video, checking frame "
                        "counts and finite values (slower)")
    p.add_argument("--strict", action="store_true", help="exit 1 on warnings too")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..validate import format_report, validate

    report = validate(args.src, args.events, args.subtask_level, args.min_length, args.decode)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    failed = report["errors"] > 0 or (args.strict and report["warnings"] > 0)
    return 1 if failed else 0
