"""Command line entry point: ``python -m data_tools VERB ...`` (console script ``wallwm-data``).

Robot episodes -> events -> WebDataset shards. Each verb lives in its own module under
``data_tools/commands``; this file only assembles them and turns input errors into a one-line
message and exit code 1 (argparse usage errors exit with 2).

example:
  python -m data_tools --help
  python -m data_tools synth --out data/synth/smoke --episodes 48 --seed 0
  python -m data_tools build-shards --src data/synth/smoke --out data/shards/smoke --level L1 --seed 0
"""

from __future__ import annotations

import argparse
import os
import sys

from .commands import load_verbs
from sim.errors import SimError

from .errors import DataToolsError


def _prog() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return "python -m data_tools" if name in ("", "__main__.py", "-c") else name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_prog(),
        description="Data tools for event-centric world-action pretraining: "
                    "robot episodes (LeRobot v2.1 or v3.0 + events) -> validated events -> "
                    "clusters -> WebDataset event shards.",
        epilog="Run '%(prog)s VERB --help' for the flags and examples of one verb.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module in load_verbs():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (DataToolsError, SimError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error. Point stdout at devnull so
        # that the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
