"""Where a rank's tensor laid out like a parameter sits in the canonical one, and which rank
writes it: the rule the model's pieces and the optimizer state's pieces share."""

from __future__ import annotations

from torch import Tensor

from wallwm_pretrain.checkpoint.pieces import TensorView, is_whole, tp_view, whole
from wallwm_pretrain.optim.tp_matrices import is_tp_sharded


def param_view(name: str, p: Tensor, tp_rank: int, tp_size: int) -> TensorView:
    """Where a tensor laid out like parameter ``p`` (this rank's slice) sits in the whole one."""
    if tp_size > 1 and is_tp_sharded(p):
        return tp_view(name, p.shape, int(p.partition_dim), int(getattr(p, "partition_stride", 1)), tp_rank, tp_size)
    return whole(name, p.shape)


def writes(view: TensorView, dp_rank: int, tp_rank: int) -> bool:
    """Whether this rank writes its copy: data-parallel rank 0, and tensor-parallel rank 0 for
    tensors every tensor-parallel rank holds whole."""
    return dp_rank == 0 and (tp_rank == 0 or not is_whole(view))
