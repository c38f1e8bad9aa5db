"""Estimate per-episode video/action time offsets; write them for build-shards --sync.

For each episode, correlates frame-to-frame image change (all cameras) with the robot's
motion (change of observation.state) over lags of +-max-lag frames and reports the best lag:
offset k means video frame t + k shows data row t. Estimates whose correlation is below
--min-corr are reported but not applied (offset 0). Pass the file to build-shards --sync to
shift the frames into line with the actions.

example:
  python -m data_tools sync --src data/synth/smoke --out data/synth/smoke-sync.json
  python -m data_tools sync --src /data/ds --max-lag 8 --motion-dims 0,1,2 --workers 4 --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_progress_flag, add_verb_parser


def _dims(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "sync", __doc__)
    p.add_argument("--src", type=Path, required=True, help="LeRobot v2.1 or v3.0 dataset folder")
    p.add_argument("--out", type=Path, default=None,
                   help="write the offsets here (JSON) for build-shards --sync")
    p.add_argument("--max-lag", type=int, default=5,
                   help="largest offset tried, in frames, both directions (default 5)")
    p.add_argument("--min-corr", type=float, default=0.4,
                   help="apply an estimate only if its correlation reaches this (default 0.4)")
    p.add_argument("--motion-dims", type=_dims, default=None,
                   help="observation.state dimensions that measure motion, e.g. 0,1,2 (default: "
                        "those whose names do not look like velocities or forces)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_progress_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..sidecars import write_json
    from ..sync import estimate_offsets

    result = estimate_offsets(args.src, args.max_lag, args.min_corr, args.motion_dims,
                              args.workers, progress=not args.quiet)
    if args.out is not None:
        write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{'episode':>8} {'offset':>6} {'estimated':>9} {'corr':>7} {'corr@0':>7}  confident")
    for e in result["episodes"]:
        print(f"{e['episode_index']:>8} {e['offset']:>6} {e['estimated']:>9} {e['corr']:>7.3f} "
              f"{e['corr_at_zero']:>7.3f}  {'yes' if e['confident'] else 'no'}")
    shifted = sum(e["offset"] != 0 for e in result["episodes"])
    unsure = sum(not e["confident"] for e in result["episodes"])
    print(f"{len(result['episodes'])} episodes: {shifted} with a non-zero offset, {unsure} not "
          f"confident (motion dims {result['motion_dims']})"
          + (f"; wrote {args.out}" if args.out else ""))
    return 0
