"""Summarise a shard folder: counts per level and cluster, event lengths, example captions.

Recounts everything from the samples in the tars and compares with index.json (exit code 1
if they disagree), prints example captions per VL and action cluster, and saves event-length
histograms as PNG (per level, and per action cluster). Also available as `stats`.

example:
  python -m data_tools inspect --shards data/shards/smoke
  python -m data_tools stats --shards data/shards/smoke --plots /tmp/plots --examples 5 --json
  python -m data_tools inspect --shards s3://bucket/shards/smoke --plots /tmp/plots
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..shardread import location
from . import add_verb_parser


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "inspect", __doc__, aliases=["stats"])
    p.add_argument("--shards", type=location, required=True,
                   help="shard folder with index.json: a path, s3://bucket/prefix, http(s)://host/prefix or "
                        "pipe:COMMAND with {name} for the file (credentials from the environment / AWS config)")
    p.add_argument("--plots", type=Path, default=None,
                   help="folder for the PNG histograms (default: <shards>.inspect beside the "
                        "shard folder)")
    p.add_argument("--no-plots", action="store_true", help="do not draw the histograms")
    p.add_argument("--examples", type=int, default=3,
                   help="example captions per cluster (default 3)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..inspection import format_report, inspect_shards, save_plots

    report = inspect_shards(args.shards, args.examples)
    plots = []
    if not args.no_plots:
        if args.plots is None and not isinstance(args.shards, Path):
            raise SystemExit("inspect: --plots (or --no-plots) is needed for a remote --shards")
        target = args.plots or args.shards.parent / f"{args.shards.name}.inspect"
        plots = save_plots(report, target)
    if args.json:
        public = {k: v for k, v in report.items() if not k.startswith("_")}
        print(json.dumps({**public, "plots": [str(p) for p in plots]}, indent=1))
    else:
        print(format_report(report, plots))
    return 1 if report["problems"] else 0
