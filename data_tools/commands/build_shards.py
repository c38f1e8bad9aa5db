"""Cut one WebDataset sample per event of one caption level into tar shards + index.json.

Reads a LeRobot v2.1 or v3.0 dataset directly (no conversion step: nothing is copied or
re-encoded) with its events (events.jsonl sidecar, --events, or the dataset's own subtask /
language annotations), decodes the videos, resizes the frames and writes shard-000000.tar, ...
whose samples hold json meta, actions.npy [T, A], state.npy [S], states.npy [T, S] and
frames.npy [T, V, H, W, C] (T = event length). Sample order is shuffled by --seed; the same
inputs and seed give byte-identical shards whatever --workers is. A re-run keeps the shards
that are already complete (sha256 in index.json, or in the .partial folder of an interrupted
run) and decodes only the episodes the missing ones need.

example:
  python -m data_tools build-shards --src data/synth/smoke --out data/shards/smoke --level L1 --seed 0
  python -m data_tools build-shards --src data/synth/smoke --out /tmp/l2 --level L2 --image-size 64
  python -m data_tools build-shards --src /data/ds --out /data/shards --workers 8 \\
      --clusters /data/clusters.json --sync /data/sync.json
  # stage 1 (video pretraining): drop quasi-static steps, counts in index.json["pruning"]
  python -m data_tools build-shards --src data/synth/smoke --out data/shards/smoke-static \\
      --prune-static 1.0
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_progress_flag, add_verb_parser
from ..annotations import add_event_source_flags


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "build-shards", __doc__)
    p.add_argument("--src", type=Path, required=True,
                   help="LeRobot v2.1 or v3.0 dataset folder (events.jsonl at its root, --events, "
                        "or LeRobot subtask/language annotations)")
    p.add_argument("--out", type=Path, required=True,
                   help="shard folder to write (replaced if it already holds shards)")
    add_event_source_flags(p)
    p.add_argument("--level", default="L1",
                   help="caption level to cut one sample per event of: L3, L2, L1 or L0 (default L1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample shuffle (default 0)")
    p.add_argument("--image-size", type=int, default=32,
                   help="frames are area-resized to this height and width (default 32)")
    p.add_argument("--samples-per-shard", type=int, default=64,
                   help="samples per tar shard; the last shard may hold fewer (default 64)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes for decoding and writing; output does not depend on it "
                        "(default 1)")
    p.add_argument("--clusters", type=Path, default=None,
                   help="cluster assignments from `cluster --out`: fills vl_cluster/action_cluster "
                        "(default: every sample in cluster 0)")
    p.add_argument("--sync", type=Path, default=None,
                   help="per-episode video offsets from `sync --out`: frames are shifted to line "
                        "up with the actions")
    p.add_argument("--prune-static", type=float, default=0.0, metavar="THRESHOLD",
                   help="drop quasi-static control steps (for stage-1 video shards): step 0 of an "
                        "event is kept, and each step whose motion from the last kept step is >= "
                        "THRESHOLD (mean absolute pixel difference over all views, uint8 units "
                        "in [0, 255]); the same steps leave actions, states and frames. "
                        "0 = off (default)")
    p.add_argument("--prune-min-steps", type=int, default=5, metavar="N",
                   help="an event that pruning would leave with fewer than N steps (or fewer than "
                        "its length, if shorter) is kept whole and counted (default 5: two latent "
                        "frames at VAE temporal compression 4)")
    p.add_argument("--force", action="store_true",
                   help="rebuild every shard even if an earlier run's shards still match")
    add_progress_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..shards import build_shards

    index = build_shards(args.src, args.out, level=args.level, seed=args.seed,
                         image_size=args.image_size, samples_per_shard=args.samples_per_shard,
                         progress=not args.quiet, workers=args.workers, events_path=args.events,
                         subtask_level=args.subtask_level, clusters=args.clusters, sync=args.sync,
                         force=args.force, prune_static=args.prune_static,
                         prune_min_steps=args.prune_min_steps)
    n = len(index["shards"])
    print(f"wrote {index['total_samples']} {index['level']} samples from {index['episodes']} "
          f"episodes into {n} shards in {args.out} ({index['reused']} of {n} shards reused "
          "from an earlier run)")
    if "pruning" in index:
        from ..prune import summary_line

        print(summary_line(index["pruning"]))
    return 0
