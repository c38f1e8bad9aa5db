"""Cut one WebDataset sample per event of one caption level into tar shards + index.json.

Reads a LeRobot v3.0 dataset with an events.jsonl sidecar, decodes the videos, resizes the
frames and writes shard-000000.tar, ... whose samples hold json meta, actions.npy [T, A],
state.npy [S], states.npy [T, S] and frames.npy [T, V, H, W, C] (T = event length). Sample
order is shuffled by --seed; the same inputs and seed give byte-identical shards.

example:
  python -m data_tools build-shards --src data/synth/smoke --out data/shards/smoke --level L1 --seed 0
  python -m data_tools build-shards --src data/synth/smoke --out /tmp/l2 --level L2 --image-size 64
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_progress_flag, add_verb_parser


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "build-shards", __doc__)
    p.add_argument("--src", type=Path, required=True,
                   help="LeRobot v3.0 dataset folder with events.jsonl at its root")
    p.add_argument("--out", type=Path, required=True,
                   help="shard folder to write (replaced if it already holds shards)")
    p.add_argument("--level", default="L1",
                   help="caption level to cut one sample per event of: L3, L2, L1 or L0 (default L1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample shuffle (default 0)")
    p.add_argument("--image-size", type=int, default=32,
                   help="frames are area-resized to this height and width (default 32)")
    p.add_argument("--samples-per-shard", type=int, default=64,
                   help="samples per tar shard; the last shard may hold fewer (default 64)")
    add_progress_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..shards import build_shards

    index = build_shards(args.src, args.out, level=args.level, seed=args.seed,
                         image_size=args.image_size, samples_per_shard=args.samples_per_shard,
                         progress=not args.quiet)
    print(f"wrote {index['total_samples']} {index['level']} samples from {index['episodes']} "
          f"episodes into {len(index['shards'])} shards in {args.out}")
    return 0
