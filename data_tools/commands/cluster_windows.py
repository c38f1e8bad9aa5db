"""Re-cluster episode shards on the history-conditioned windows of unified mode (stage 5).

Enumerates the windows the unified loader cuts from each episode of --shards (anchors every
--horizon steps, --history latent frames of --frame-stride steps before each anchor: the loader's
data.chunk_horizon, data.history_latents and model.frame_stride; the same function as the loader)
and clusters them: vision-language clusters from the caption embeddings of the window's atomic
event and of its history's event (offline all-MiniLM-L6-v2, centred per episode), action clusters
from the window's trajectory conditioned on its history (actions and states of the history steps
and the chunk, resampled and standardised), k-means with canonical ids as `cluster`. Writes the
ids into each episode json (`windows: {horizon, history, frame_stride, vl: [...], action: [...]}`,
one per window) and index.json (`windows`, `window_vl_cluster_counts`,
`window_action_cluster_counts`, per-shard counts; bytes and sha256 kept right), in place and
resumably. The loader then balances data.mode=unified per window (data.balance alpha < 1) and
refuses shards clustered for other windows, naming both. A re-run with the same flags does
nothing; other flags need --force.

example:
  python -m data_tools build-episodes --shards data/shards/smoke --out data/shards/smoke-episodes
  python -m data_tools cluster-windows --shards data/shards/smoke-episodes --horizon 16 --history 2
  python -m wallwm_pretrain.train --config configs/smoke.yaml --config configs/smoke_unified.yaml
  python -m data_tools cluster-windows --shards EPISODES --horizon 32 --history 4 --vl-k 12 --force
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import add_clustering_flags, add_progress_flag, add_verb_parser


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "cluster-windows", __doc__)
    p.add_argument("--shards", type=Path, required=True,
                   help="episode-shard folder (from build-episodes), rewritten in place")
    p.add_argument("--horizon", type=int, required=True,
                   help="H_a: control steps per window, the training run's data.chunk_horizon")
    p.add_argument("--history", type=int, required=True,
                   help="M: latent frames before each anchor, the training run's data.history_latents")
    p.add_argument("--frame-stride", type=int, default=4,
                   help="K: control steps per latent frame, the training run's model.frame_stride (default 4)")
    add_clustering_flags(p, "", "each window's history + chunk trajectory")
    p.add_argument("--workers", type=int, default=1, help="processes rewriting shards (default 1)")
    p.add_argument("--force", action="store_true",
                   help="re-cluster shards that already carry window clusters from other flags")
    add_progress_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..window_clusters import cluster_windows

    result = cluster_windows(args.shards, args.horizon, args.history, args.frame_stride, vl_k=args.vl_k,
                             action_k=args.action_k, resample=args.resample, centre=args.centre,
                             seed=args.seed, workers=args.workers, progress=not args.quiet, force=args.force,
                             examples=args.examples)
    spec = result["spec"]
    print(f"{spec['episodes']} episodes -> {spec['windows']} windows (horizon {spec['horizon']}, history "
          f"{spec['history']}, frame stride {spec['frame_stride']}) -> {len(result['vl'])} VL clusters, "
          f"{len(result['action'])} action clusters")
    for c, s in result["vl"].items():
        if s["examples"]:
            print(f"  vl {c:>2} ({s['count']:>4}): " + " | ".join(s["examples"]))
        else:
            print(f"  vl {c:>2} ({s['count']:>4})")
    print("  action counts: " + json.dumps({c: s["count"] for c, s in result["action"].items()}))
    state = "already up to date" if not result["done"] else f"{result['done']} rewritten"
    print(f"{args.shards}: {result['shards']} shard(s), {state}")
    return 0
