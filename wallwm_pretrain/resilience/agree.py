"""One small collective per step: do all ranks apply this step, and does anyone want to stop?

Each rank contributes (its step was non-finite, it wants to stop, and why); a MAX all-reduce
over the world gives every rank the same answer, so all skip the same update, and all save
and exit at the same step boundary even when the signal or the deadline reached one rank only.

Trade-off: a few bytes through one collective per step, on the step's critical path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

# why a rank wants to stop, by precedence (the highest code of all ranks wins)
REASONS = ("", "wall time", "SIGUSR1", "SIGTERM")


@dataclass(frozen=True)
class Verdict:
    nonfinite: bool
    """Some rank's loss or gradient norm was not finite: every rank skips the update."""
    stop: str
    """Why the run stops at this boundary ('' = it goes on): a signal name or 'wall time'."""


def agree(nonfinite: bool, stop: str, device: torch.device) -> Verdict:
    """The verdict of all ranks (a collective: every rank calls it at the same point)."""
    if stop not in REASONS:
        raise ValueError(f"unknown stop reason {stop!r}; expected one of {REASONS}")
    flags = torch.tensor([int(nonfinite), REASONS.index(stop)], dtype=torch.int32, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    nonfinite_all, code = flags.tolist()
    return Verdict(bool(nonfinite_all), REASONS[code])
