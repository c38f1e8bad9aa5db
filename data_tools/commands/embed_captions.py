"""Add frozen text-encoder states of each sample's caption, next caption and task to the shards.

Runs a frozen transformers UMT5EncoderModel (Wan's text encoder, or the tiny one of
`python -m wallwm_pretrain.convert make-tiny`) with its tokenizer from local folders and adds,
in place, `caption_states.npy`, `next_caption_states.npy`, `task_states.npy` (float16 [L, D],
padding removed) and `text_lengths.npy` (int32 [3]) to every sample; writes the states of the
empty string once as `empty_text_states.npy` beside index.json (caption drop swaps them in).
The tokenizer is taken from --tokenizer, else the encoder folder, else the `tokenizer` folder
beside it (the diffusers Wan layout). A re-run skips finished shards; --force recomputes all.
Across nodes: each rank (--rank/--world, or srun's / torchrun's variables) does every world-th
shard and records it beside index.json; `--finalize`, once all are done, checks that every shard
was done once and writes index.json, the same bytes as one process (launch/prepare.sh).

example:
  python -m data_tools embed-captions --shards data/shards/smoke --text-encoder /models/tiny-wan/text_encoder
  python -m data_tools embed-captions --shards /data/shards/l1 \\
      --text-encoder /models/Wan2.2-TI2V-5B-Diffusers/text_encoder --device cuda --batch-size 64
  sbatch --nodes 4 launch/prepare.sh embed-captions --shards /data/shards/l1 \
      --text-encoder /models/Wan2.2-TI2V-5B-Diffusers/text_encoder --device cuda
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import add_progress_flag, add_rank_flags, add_verb_parser, resolve_ranks


def add_parser(subparsers) -> None:
    p = add_verb_parser(subparsers, "embed-captions", __doc__)
    p.add_argument("--shards", type=Path, required=True, help="shard folder with index.json "
                   "(changed in place)")
    p.add_argument("--text-encoder", type=Path, default=None,
                   help="local transformers UMT5EncoderModel folder (config.json + weights); required "
                        "except with --finalize")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer folder (default: the encoder folder, else ../tokenizer)")
    p.add_argument("--device", default="cpu", help="torch device of the encoder (default cpu)")
    p.add_argument("--batch-size", type=int, default=16, help="texts encoded at once (default 16)")
    p.add_argument("--max-length", type=int, default=512,
                   help="tokens kept per text, with the end token (default 512, as Wan)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes, each with its own encoder copy, one shard at a time (default 1)")
    p.add_argument("--force", action="store_true",
                   help="recompute every shard (e.g. to replace states of another encoder)")
    add_rank_flags(p)
    add_progress_flag(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..ranks import finalize
    from ..textstates import IDENTITY, embed_captions

    if args.finalize:
        res = finalize(args.shards, "text_states", IDENTITY)
        print(f"text states: finalised {args.shards}: {res['recorded']} shard(s) recorded by the ranks, "
              f"{res['shards']} in all")
        return 0
    if args.text_encoder is None:
        raise SystemExit("embed-captions: --text-encoder is required (except with --finalize)")
    rank, world = resolve_ranks(args)
    res = embed_captions(args.shards, args.text_encoder, args.tokenizer, args.device,
                         args.batch_size, args.workers, args.max_length,
                         progress=not args.quiet, force=args.force, rank=rank, world=world)
    mine = f" of rank {rank}/{world} (--finalize when all ranks are done)" if world > 1 else ""
    print(f"text states: {res['done']} shard(s) embedded, {res['skipped']} already done, "
          f"{res['shards']}{mine} in {args.shards}")
    return 0
