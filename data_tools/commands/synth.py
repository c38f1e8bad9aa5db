"""Generate a synthetic event-annotated robot dataset (LeRobot v3.0 or v2.1 + events.jsonl).

A simulated tabletop: a gripper, coloured cubes, bowls and plates, two small cameras
(overhead and wrist, 64x64 by default). Scripted tasks (put a cube in a container, stack two cubes, move two cubes)
are recorded with hierarchical captions: L3 task, L2 subtasks, L1 action primitives
(reach, grasp, lift, transport, place, release, regrasp). The same --seed gives identical files.

example:
  python -m data_tools synth --out data/synth/smoke --episodes 48 --seed 0
  python -m data_tools synth --out /tmp/tail --episodes 8 --seed 1 --regrasp-prob 1.0 --vcodec av1
  python -m data_tools synth --out /tmp/v21 --episodes 4 --seed 0 --layout v2.1 --vcodec av1
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_progress_flag, add_verb_parser


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability in [0, 1]")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a positive integer")
    return value


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "synth", __doc__)
    p.add_argument("--out", type=Path, required=True,
                   help="output dataset folder (replaced if it already holds a LeRobot dataset)")
    p.add_argument("--episodes", type=_positive, required=True, help="number of episodes")
    p.add_argument("--seed", type=int, required=True, help="random seed; same seed, same files")
    p.add_argument("--image-size", type=_positive, default=64,
                   help="camera image height and width in pixels (default 64)")
    p.add_argument("--fps", type=_positive, default=10,
                   help="frames per second; motion speeds are in m/s, so this sets sampling (default 10)")
    p.add_argument("--regrasp-prob", type=_probability, default=0.2,
                   help="fraction of episodes where a grasp slips and a regrasp event follows (default 0.2)")
    p.add_argument("--vcodec", choices=("h264", "av1"), default="h264",
                   help="video codec: h264 (libx264) or av1 (libsvtav1, LeRobot's default) (default h264)")
    p.add_argument("--frames-per-file", type=_positive, default=100_000,
                   help="start a new data/video file after this many frames (default 100000)")
    p.add_argument("--layout", choices=("v3.0", "v2.1"), default="v3.0",
                   help="LeRobot layout: v3.0 (episodes concatenated per file) or v2.1 (one "
                        "parquet and one mp4 per camera per episode) (default v3.0)")
    add_progress_flag(p)
    p.set_defaults(run=run)


def looks_like_dataset(path: Path) -> bool:
    return (path / "meta" / "info.json").is_file()


def run(args: argparse.Namespace) -> int:
    from ..fsutil import staged_output
    from ..synthworld import synthesize

    with staged_output(args.out, looks_like_dataset) as tmp:
        summary = synthesize(tmp, args.episodes, args.seed, image_size=args.image_size,
                             fps=args.fps, regrasp_prob=args.regrasp_prob, vcodec=args.vcodec,
                             frames_per_file=args.frames_per_file, progress=not args.quiet,
                             layout=args.layout)
    print(f"wrote {summary['episodes']} episodes, {summary['frames']} frames, "
          f"{summary['events']} events ({summary['regrasp_events']} regrasp) to {args.out}")
    return 0
