"""``python -m wallwm_pretrain.checkpoint merge``: a sharded checkpoint in the gathered layout.

    python -m wallwm_pretrain.checkpoint merge runs/smoke --out exports/smoke_gathered
"""

from __future__ import annotations

import argparse
import sys

from .manifest import CheckpointError
from .merge import merge_checkpoint


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wallwm_pretrain.checkpoint",
        description="Offline tools for training checkpoints (run in one process, no GPU needed).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    merge = sub.add_parser(
        "merge",
        help="write a sharded checkpoint in the gathered layout",
        description=(
            "Read every piece of a sharded checkpoint (the layout training writes: one file per rank "
            "plus index.json) and write the same step in the gathered layout (model.safetensors, "
            "optimizer.safetensors/.json, trainer state, config, manifest), which loads like any "
            "checkpoint: train.resume, model.init_from, export and evaluation take it."
        ),
        epilog="Example: python -m wallwm_pretrain.checkpoint merge runs/smoke/checkpoints/step_00000200 --out exports/smoke",
    )
    merge.add_argument("source", metavar="RUN_OR_STEP",
                       help="a sharded checkpoint folder (checkpoints/step_XXXXXXXX), or a run folder: its newest "
                            "complete checkpoint")
    merge.add_argument("--out", required=True, metavar="RUN_DIR",
                       help="run folder to write into: the result is RUN_DIR/checkpoints/step_XXXXXXXX (the "
                            "source's own run folder replaces the sharded step by the gathered one)")
    merge.add_argument("--no-verify", action="store_true",
                       help="skip the sha256 check of every file against the source's manifest")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = merge_checkpoint(args.source, args.out, verify=not args.no_verify)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
