"""Start a gloo process group of N ranks for a test, wait for it, return each rank's record.

Ranks are forked from a ``forkserver`` that has already imported torch, megatron-core and the
model, so a group of 4 starts in well under a second instead of re-importing in each process
(~5 s each on a 2-core machine). A rank that fails stops the whole group at once rather than
leaving its peers blocked in a collective until the deadline.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from multiprocessing.connection import wait
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))  # the forkserver imports the worker module by name

import _equivalence_worker as worker  # noqa: E402

_CTX = mp.get_context("forkserver")
# Takes effect only if this process has not started a forkserver yet; otherwise slower, not wrong.
_CTX.set_forkserver_preload(
    ["_equivalence_worker", "_ddp_reference", "wallwm_pretrain.parallel.pipeline"]
)

DEADLINE_S = 120


def launch(tmp: Path, world: int, tp: int, **options) -> list[dict]:
    """Run :func:`worker.run_rank` on ``world`` ranks with tensor-parallel size ``tp``."""
    tmp.mkdir(parents=True, exist_ok=True)
    procs = [
        _CTX.Process(target=worker.run_rank, args=(r, world, tp, str(tmp / "rdzv"), str(tmp), options))
        for r in range(world)
    ]
    run_ranks(procs, f"a world of {world} (tp={tp})")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def run_ranks(procs: list, what: str) -> None:
    """Start rank processes and wait for all; stop the rest as soon as one fails (no sleeps)."""
    for p in procs:
        p.start()
    end = time.monotonic() + DEADLINE_S
    running = list(procs)
    while running and time.monotonic() < end:
        wait([p.sentinel for p in running], timeout=end - time.monotonic())
        running = [p for p in procs if p.exitcode is None]
        if any(p.exitcode for p in procs if p.exitcode is not None):
            break
    for p in running:
        p.terminate()
    for p in procs:
        p.join()
    codes = [p.exitcode for p in procs]
    if running or any(codes):
        raise AssertionError(f"ranks of {what} failed or hung; exit codes {codes}")


def logical(records: list[dict], run: str, part: str, name: str) -> torch.Tensor:
    """Whole tensor ``name`` from the TP slices held by the ranks of data-parallel rank 0 (the
    pipeline rank that holds ``name``).

    Written independently of ``wallwm_pretrain.optim.tp_matrices`` (which it checks): with
    stride s, rank r holds pieces r, r + tp, r + 2 tp, ... of the s * tp pieces of the tensor.
    """
    group = sorted(
        (r for r in records if r["ctx"]["dp_rank"] == 0 and name in r[run][part]), key=lambda r: r["ctx"]["tp_rank"]
    )
    if not group:
        raise KeyError(f"no rank holds {part} {name!r}")
    layout = group[0][run]["layout"][name]
    slices = [r[run][part][name] for r in group]
    if len(slices) == 1 or not layout["sharded"]:
        return slices[0]
    dim, stride = layout["dim"], layout["stride"]
    pieces = [s.chunk(stride, dim) for s in slices]
    ordered = [pieces[i % len(slices)][i // len(slices)] for i in range(stride * len(slices))]
    return torch.cat(ordered, dim)
