"""The verbs of ``python -m data_tools``, one module each.

Every verb module exposes ``add_parser(subparsers)`` (registers its sub-command, flags and
``--help`` text) and ``run(args) -> int`` (the exit code). Verb modules import their heavy
dependencies inside ``run`` so that ``--help`` stays instant. A new verb is a new module plus
one entry in ``VERB_MODULES``; the order here is the order ``--help`` lists them in.
"""

from __future__ import annotations

import argparse
import importlib
import textwrap

VERB_MODULES = ("synth", "record_metaworld", "events", "validate", "sync", "cluster", "build_shards",
                "build_conditioner", "build_episodes", "cluster_windows", "encode_latents", "embed_captions",
                "inspect_shards")


def load_verbs() -> list:
    return [importlib.import_module(f"{__name__}.{name}") for name in VERB_MODULES]


def add_verb_parser(subparsers, name: str, module_doc: str,
                    aliases: list[str] | None = None) -> argparse.ArgumentParser:
    """A sub-command whose --help shows the module docstring (summary line + examples)."""
    doc = textwrap.dedent(module_doc or "").strip()
    summary = doc.splitlines()[0] if doc else name
    return subparsers.add_parser(name, help=summary, description=doc, aliases=aliases or [],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def add_clustering_flags(parser: argparse.ArgumentParser, per: str, trajectory: str) -> None:
    """The k-means flags ``cluster`` and ``cluster-windows`` share (``per``: what the counts are
    per, e.g. " per level"; ``trajectory``: what --resample resamples)."""
    parser.add_argument("--vl-k", type=int, default=8, help=f"number of VL clusters{per} (default 8)")
    parser.add_argument("--action-k", type=int, default=8, help=f"number of action clusters{per} (default 8)")
    parser.add_argument("--resample", type=int, default=16,
                        help=f"steps {trajectory} is resampled to (default 16)")
    parser.add_argument("--centre", choices=("episode", "none"), default="episode",
                        help="subtract each episode's mean caption embedding before clustering "
                             "(episode, the default) or not (none)")
    parser.add_argument("--seed", type=int, default=0, help="k-means seed (default 0)")
    parser.add_argument("--examples", type=int, default=3,
                        help="example captions printed per VL cluster (default 3)")


def add_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bars (errors and the final summary still print)")


def add_rank_flags(parser: argparse.ArgumentParser) -> None:
    """--rank/--world/--finalize of the verbs that run a frozen model over finished shards."""
    parser.add_argument("--rank", type=int, default=None,
                        help="this process's share of the shards: shard i goes to rank i %% world "
                             "(default: $RANK of torchrun, else $SLURM_PROCID of srun, else 0)")
    parser.add_argument("--world", type=int, default=None,
                        help="processes sharing the work, e.g. nodes (default: $WORLD_SIZE, else "
                             "$SLURM_NTASKS, else 1). With more than one, ranks leave index.json alone "
                             "and record their shards beside it; --finalize then updates it")
    parser.add_argument("--finalize", action="store_true",
                        help="after all ranks: check that every shard was done exactly once and write "
                             "index.json (no model is loaded; the model flags may be left out)")


def resolve_ranks(args: argparse.Namespace) -> tuple[int, int]:
    """(rank, world) of a verb with :func:`add_rank_flags`, printed when several."""
    from ..ranks import rank_and_world

    rank, world, where = rank_and_world(args.rank, args.world)
    if world > 1:
        print(f"rank {rank} of {world} (from {where})", flush=True)
    return rank, world
