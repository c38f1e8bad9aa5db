"""Build episode shards from event shards: one sample per episode, for unified mode.

Joins the event samples of each episode of --shards (an event-shard folder from build-shards:
one caption level), ordered by start, into one sample `ep<episode:06d>_<level>`: `json`
(episode_id, task, caption = task, fps, start/end, vl_cluster/action_cluster = the most
common of its events', and `events`: {caption, start, end relative to the episode sample,
event_index, level, reasoning if any} in time order), `actions.npy`, `state.npy`, `states.npy`,
`frames.npy` (the events' steps concatenated). Event samples with text-encoder states (from
embed-captions) add `event_states.npy` float16 [E, L, D] (zero padded), `event_states_len.npy`
int32 [E] and `task_states.npy`. Consecutive events must meet exactly; an episode with a gap or
an overlap stops the build naming it and the spans, unless --gaps skip leaves it out. Event
latents are not joined (the causal VAE encoded each event on its own): run encode-latents on
the output. index.json keeps the event shards' format with "kind": "episode". The output is
byte-identical for the same input and flags; a re-run with the same input does nothing.

example:
  python -m data_tools build-shards --src data/synth/smoke --out data/shards/smoke --level L1
  python -m data_tools build-episodes --shards data/shards/smoke --out data/shards/smoke-episodes
  python -m data_tools encode-latents --shards data/shards/smoke-episodes --vae data/models/tiny-wan/vae
  python -m wallwm_pretrain.train --config configs/smoke.yaml data.mode=unified data.shards=data/shards/smoke-episodes
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_progress_flag, add_verb_parser


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "build-episodes", __doc__)
    p.add_argument("--shards", type=Path, required=True,
                   help="event-shard folder (index.json + shard-*.tar, from build-shards)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (created; replaced only if it holds episode shards)")
    p.add_argument("--samples-per-shard", type=int, default=64,
                   help="episodes per output tar (default 64)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the order of the episodes over the shards (default 0)")
    p.add_argument("--gaps", choices=("error", "skip"), default="error",
                   help="an episode whose consecutive events do not meet exactly: stop with an "
                        "error naming it (error, default) or leave it out (skip)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes (default 1)")
    p.add_argument("--force", action="store_true",
                   help="rebuild even if --out was built from the same input")
    add_progress_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..episodes import build_episodes

    index = build_episodes(args.shards, args.out, args.samples_per_shard, args.seed,
                           args.workers, args.gaps, progress=not args.quiet, force=args.force)
    state = "already up to date" if index["reused"] else "written"
    skipped = len(index.get("skipped_episodes") or [])
    note = f", {skipped} episode(s) with gaps left out" if skipped else ""
    print(f"{args.out}: {index['total_samples']} episode samples from {index['events']} events"
          f"{note}, {len(index['shards'])} shard(s) {state}")
    return 0
