"""Add VAE latents of every event's frames (per view) to each sample of a shard folder.

Runs a frozen diffusers AutoencoderKLWan (Wan2.1 16-channel or Wan2.2 48-channel VAE, or the
tiny one of `python -m wallwm_pretrain.convert make-tiny`) from a local folder over the frames
of every sample and adds `latents.npy` (float16 [N, V, Z, h, w], normalised with the VAE's
latents_mean/latents_std) in place, shard by shard. An event of T frames keeps its first
1 + 4*floor((T-1)/4) frames (for temporal compression 4): N = ceil(T/4) latent frames, latent
frame j going with action steps [4j, 4j+4). index.json gains a "latents" entry saying so.
A re-run skips finished shards; an interrupted run resumes; --force recomputes all.
Across nodes: each rank (--rank/--world, or srun's / torchrun's variables) does every world-th
shard and records it beside index.json; `--finalize`, once all are done, checks that every shard
was done once and writes index.json, the same bytes as one process (launch/prepare.sh).

example:
  python -m data_tools encode-latents --shards data/shards/smoke --vae /models/tiny-wan/vae
  python -m data_tools encode-latents --shards /data/shards/l1 \\
      --vae /models/Wan2.2-TI2V-5B-Diffusers/vae --device cuda --batch-size 2
  srun --nodes 4 --ntasks-per-node 1 python -m data_tools encode-latents --shards /data/shards/l1 \
      --vae /models/Wan2.2-TI2V-5B-Diffusers/vae --device cuda
  python -m data_tools encode-latents --shards /data/shards/l1 --finalize
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_progress_flag, add_rank_flags, add_verb_parser, resolve_ranks


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "encode-latents", __doc__)
    p.add_argument("--shards", type=Path, required=True, help="shard folder with index.json "
                   "(changed in place)")
    p.add_argument("--vae", type=Path, default=None,
                   help="local diffusers AutoencoderKLWan folder (config.json + weights); required except "
                        "with --finalize")
    p.add_argument("--device", default="cpu", help="torch device of the VAE (default cpu)")
    p.add_argument("--batch-size", type=int, default=1,
                   help="clips (one view of one event) encoded at once, among clips of equal "
                        "length (default 1)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes, each with its own VAE copy, one shard at a time (default 1)")
    p.add_argument("--force", action="store_true",
                   help="recompute every shard (e.g. to replace latents of another VAE)")
    add_rank_flags(p)
    add_progress_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..latents import encode_latents
    from ..ranks import finalize

    if args.finalize:
        res = finalize(args.shards, "latents", ("fingerprint",))
        print(f"latents: finalised {args.shards}: {res['recorded']} shard(s) recorded by the ranks, "
              f"{res['shards']} in all")
        return 0
    if args.vae is None:
        raise SystemExit("encode-latents: --vae is required (except with --finalize)")
    rank, world = resolve_ranks(args)
    res = encode_latents(args.shards, args.vae, args.device, args.batch_size, args.workers,
                         progress=not args.quiet, force=args.force, rank=rank, world=world)
    mine = f" of rank {rank}/{world} (--finalize when all ranks are done)" if world > 1 else ""
    print(f"latents: {res['done']} shard(s) encoded, {res['skipped']} already done, "
          f"{res['shards']}{mine} in {args.shards}")
    return 0
