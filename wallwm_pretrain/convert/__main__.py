"""``python -m wallwm_pretrain.convert SUBCOMMAND ...``: writers of model folders.

Each sub-command lives in its own module, which exposes ``add_parser(subparsers)`` (registers
its flags and ``--help``) and ``run(args) -> int``; this file only assembles them and turns
input errors into a one-line message and exit code 1.

example:
  python -m wallwm_pretrain.convert make-tiny --out /tmp/tiny-wan --seed 0
  python -m wallwm_pretrain.convert wan --src /tmp/tiny-wan/transformer --out /tmp/wan-init model.action_dim=4 model.state_dim=8
  python -m wallwm_pretrain.convert to-diffusers --ckpt runs/smoke-wan --out /tmp/smoke-wan-diffusers
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import ConvertError

# Sub-command modules of this package, in --help order.
SUBCOMMANDS = ("tiny", "wan", "to_diffusers")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m wallwm_pretrain.convert",
        description="Write model folders for the Wan-architecture video tower, from diffusers and back.",
        epilog="Run '%(prog)s SUBCOMMAND --help' for the flags of one sub-command.")
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__package__}.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
