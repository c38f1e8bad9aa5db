"""The process groups an optimizer works over, handed in by the caller.

``wallwm_pretrain.parallel`` creates every group of a run; an optimizer only receives them, as
one :class:`OptimizerGroups` (``parallel.state.optimizer_groups`` builds it from the run's
layout). ``None`` for a group means "this rank alone": a single process needs no collective at
all, and :meth:`OptimizerGroups.single` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch.distributed as dist


@dataclass(frozen=True)
class OptimizerGroups:
    """Groups and coordinates of this rank, for the model chunks of its pipeline rank.

    Attributes:
        tp_dp: the DP x TP ranks that hold the same pipeline rank (megatron's tensor-and-data
            parallel group; where distributed Muon places its matrices' homes).
        tp: this rank's tensor-parallel group.
        dp: this rank's data-parallel group.
        tp_rank, tp_size, dp_rank, dp_size, pp_rank: this rank's coordinates.
        pp: this rank's pipeline group (pipeline ranks meet there when a checkpoint is gathered).
        pp_size: number of pipeline ranks.
        model_parallel: the TP x PP group over which sliced gradients and pipeline ranks add up in the
            global gradient norm; ``None`` when tp * pp == 1.
    """

    tp_dp: Optional[dist.ProcessGroup]
    tp: Optional[dist.ProcessGroup]
    dp: Optional[dist.ProcessGroup]
    tp_rank: int
    tp_size: int
    dp_rank: int
    dp_size: int
    pp_rank: int = 0
    pp: Optional[dist.ProcessGroup] = None
    pp_size: int = 1
    model_parallel: Optional[dist.ProcessGroup] = None

    @property
    def tp_dp_size(self) -> int:
        return self.tp_size * self.dp_size

    @property
    def model_parallel_size(self) -> int:
        return self.tp_size * self.pp_size

    @classmethod
    def single(cls) -> "OptimizerGroups":
        """One process: no collectives at all."""
        return cls(None, None, None, 0, 1, 0, 1, 0)
