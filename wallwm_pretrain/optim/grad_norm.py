"""Global gradient norm and clipping across model-parallel ranks.

The global norm is the norm of the gradient of the *logical* model: a tensor-parallel slice
contributes its squared norm and the slices add up over the group; a replicated parameter
(norms, AdaLN, embeddings, heads) has the same gradient on every tensor-parallel rank and is
counted once, on tensor-parallel rank 0. The squared sums are all-reduced over the
model-parallel group (tp x pp), so pipeline ranks, each with its own parameters, add up too,
and every rank gets the same norm and hence the same clip factor.

Trade-off: one small all-reduce per step; data-parallel ranks need none because their
gradients are already identical after the data-parallel reduction.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import Tensor

from wallwm_pretrain.optim.tp_matrices import is_tp_sharded


def global_grad_norm(
    params_and_grads: Iterable[tuple[Tensor, Tensor]],
    tp_rank: int,
    model_parallel_group: dist.ProcessGroup | None,
    model_parallel_size: int,
    device: torch.device,
) -> Tensor:
    """L2 norm of all gradients of the logical model (fp32 scalar, same on every rank).

    Args:
        params_and_grads: (parameter, gradient) of this rank; the parameter carries megatron's
            ``tensor_model_parallel`` mark when its gradient is a slice.
        tp_rank: this rank's tensor-parallel rank (replicated gradients count on rank 0 only).
        model_parallel_group: the group over which slices and pipeline ranks add up.
        model_parallel_size: its size; 1 skips the collective.
        device: where the result lives (the collective's device).
    """
    # fp32 per tensor first: a low-precision sum of squares loses its digits.
    squares = [
        torch.linalg.vector_norm(g, dtype=torch.float32).square()
        for p, g in params_and_grads
        if is_tp_sharded(p) or tp_rank == 0
    ]
    sq = torch.stack(squares).sum() if squares else torch.zeros((), dtype=torch.float32, device=device)
    if model_parallel_size > 1:
        # Every rank joins, even one that holds nothing to count: the collective needs all.
        dist.all_reduce(sq, group=model_parallel_group)
    return sq.sqrt()


@torch.no_grad()
def clip_by_global_norm(grads: list[Tensor], total_norm: Tensor, max_norm: float) -> None:
    """Scale ``grads`` in place so the global norm is at most ``max_norm`` (0 = no clipping)."""
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0 (0 disables clipping), got {max_norm}")
    if max_norm == 0:
        return
    coef = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
