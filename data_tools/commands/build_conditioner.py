"""Build conditioner shards from event shards: observations inside events, with their targets.

For each event sample of --src (an event-shard folder from build-shards) takes --per-event K
observation times t = start + floor(i * length / K), i = 0..K-1 (repeats dropped; the event
start is always one), and writes one sample per time, key `<event key>_t<t:05d>`:
`json` (task, done_captions: the captions of the episode's events that ended by t, caption:
the event in progress = the next-event description to predict, remaining = end - t control
steps, time, offset, clusters, ...), `observation.npy` uint8 [V, H, W, C] (the frames at t)
and `state.npy` float32 [S] (the state at t). index.json keeps the event shards' format
(counts, sha256, cluster counts, dims, statistics) with "kind": "conditioner". The output is
byte-identical for the same input and flags; a re-run with the same input does nothing.
Then add the target captions' text-encoder states with embed-captions.

example:
  python -m data_tools build-conditioner --src data/shards/smoke --out data/shards/smoke-cond --per-event 3
  python -m data_tools embed-captions --shards data/shards/smoke-cond --text-encoder data/models/tiny-wan/text_encoder
  python -m data_tools build-conditioner --src /data/shards/l1 --out /data/shards/l1_cond \\
      --per-event 8 --samples-per-shard 1024 --workers 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_progress_flag, add_verb_parser


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "build-conditioner", __doc__)
    p.add_argument("--src", type=Path, required=True,
                   help="event-shard folder (index.json + shard-*.tar, from build-shards)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (created; replaced only if it holds conditioner shards)")
    p.add_argument("--per-event", type=int, default=4,
                   help="observation times per event, K (default 4; fewer for events shorter "
                        "than K steps)")
    p.add_argument("--samples-per-shard", type=int, default=256,
                   help="samples per output tar (default 256)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the order of the samples over the shards (default 0)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes, one source shard at a time (default 1)")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if --out was built from the same input")
    add_progress_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..conditioner import build_conditioner

    index = build_conditioner(args.src, args.out, args.per_event, args.samples_per_shard,
                              args.seed, args.workers, progress=not args.quiet, force=args.force)
    state = "already up to date" if index["reused"] else "written"
    print(f"{args.out}: {index['total_samples']} conditioner samples from {index['events']} "
          f"events ({index['per_event']} per event), {len(index['shards'])} shard(s) {state}")
    return 0
