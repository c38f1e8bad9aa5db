"""Whole logical matrices from tensor-parallel slices, for Muon.

megatron-core marks the weights of ``ColumnParallelLinear`` / ``RowParallelLinear`` with
``tensor_model_parallel=True``, ``partition_dim`` (0 for column-, 1 for row-parallel) and
``partition_stride``. With stride s the master weight is cut into s * tp equal pieces along
``partition_dim`` and piece i lives on rank i % tp (its s pieces concatenated in order). The
gated MLP's fc1 uses s = 2 so that each rank holds its part of the gate *and* of the up
projection; the fused QKV and KV projections use s = 1, their rows already grouped per head.

:class:`TensorParallelMatrices` gathers the slices over the tensor-parallel group and undoes the
striding, so the gathered matrix equals the single-process (TP=1) matrix row for row; Newton-
Schulz then runs on it and each rank keeps its own slice. This is ``optim.muon_mode=replicated``.
Trade-off: every rank of the group orthogonalises every sharded matrix (tp-fold redundant flops
plus one all-gather per matrix per step); the owner mode of :mod:`.distributed.muon` removes the redundancy,
and uses :func:`unstride` / :func:`restride` from here to move slices.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from wallwm_pretrain.optim.muon import LocalMatrices


def is_tp_sharded(param: Tensor) -> bool:
    """Whether megatron-core split ``param`` over the tensor-parallel group."""
    return bool(getattr(param, "tensor_model_parallel", False))


def _layout(param: Tensor) -> tuple[int, int]:
    return int(param.partition_dim), int(getattr(param, "partition_stride", 1))


def unstride(slices: list[Tensor], dim: int, stride: int) -> Tensor:
    """The logical matrix from the per-rank slices (rank order) of a strided partition."""
    if stride == 1:
        return torch.cat(slices, dim)
    pieces = [s.chunk(stride, dim) for s in slices]
    return torch.cat([pieces[r][j] for j in range(stride) for r in range(len(slices))], dim)


def restride(full: Tensor, dim: int, stride: int, rank: int, size: int) -> Tensor:
    """Rank ``rank``'s slice of a logical matrix (inverse of :func:`unstride`)."""
    if full.size(dim) % (stride * size):
        raise ValueError(
            f"dimension {dim} of a {tuple(full.shape)} matrix does not split into "
            f"stride * tp = {stride} * {size} = {stride * size} equal pieces"
        )
    pieces = full.chunk(stride * size, dim)
    return torch.cat([pieces[j * size + rank] for j in range(stride)], dim)


class TensorParallelMatrices(LocalMatrices):
    """Muon's view of TP-sharded weights: gather, orthogonalise whole, keep the local slice.

    Replicated matrices (no ``tensor_model_parallel`` mark) pass through untouched. Every rank
    of the group must call :meth:`gather` for the same parameters in the same order (it is a
    collective); Muon does, since all ranks hold the same parameter list and gradients.

    Args:
        group: the tensor-parallel process group.
        rank: this process's rank in ``group``.
        size: the group's size (tp).
    """

    def __init__(self, group: dist.ProcessGroup | None, rank: int, size: int) -> None:
        self.group, self.rank, self.size = group, rank, size

    def _sharded(self, param: Tensor) -> bool:
        return self.size > 1 and is_tp_sharded(param)

    def gather(self, param: Tensor, update: Tensor) -> Tensor:
        if not self._sharded(param):
            return update
        dim, stride = _layout(param)
        slices = [torch.empty_like(update) for _ in range(self.size)]
        dist.all_gather(slices, update.contiguous(), group=self.group)
        return unstride(slices, dim, stride)

    def local(self, param: Tensor, full: Tensor) -> Tensor:
        if not self._sharded(param):
            return full
        dim, stride = _layout(param)
        return restride(full, dim, stride, self.rank, self.size)

    def logical_shape(self, param: Tensor) -> tuple[int, int]:
        rows, cols = param.size(0), param.size(1)
        if not self._sharded(param):
            return rows, cols
        dim, _ = _layout(param)
        return (rows * self.size, cols) if dim == 0 else (rows, cols * self.size)
