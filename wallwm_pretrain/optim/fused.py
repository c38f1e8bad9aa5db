"""Fused weights seen as the logical matrices they hold (Q, K, V; gate, up; K, V).

A fused projection stores several linear maps in one weight so that one matmul computes them
all: megatron's self-attention ``linear_qkv`` (rows grouped per query group as
``[q_1..q_h, k, v]``), a cross-attention ``linear_kv`` (``[k, v]`` per head) and a gated FFN's
``linear_fc1`` (``[gate; up]``). :class:`FusedRows` describes such a row layout: the weight is
``groups`` repetitions of a block of rows, and each block holds ``sizes[j]`` rows of logical
matrix ``j``. Logical matrix ``j`` is the concatenation of its rows over the groups, in order.

Muon orthogonalises each logical matrix on its own when given these layouts. Trade-off: the
split changes the update (orthogonalising ``[Q; K; V]`` couples the three spectra: a large K
gradient shrinks Q's update), and it costs one Newton-Schulz call per logical matrix instead of
one per weight (slightly fewer flops in total: the Gram matrix of each part is smaller).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class FusedRows:
    """Row layout of a fused 2-D weight.

    Attributes:
        names: one label per logical matrix, e.g. ``("q", "k", "v")``.
        sizes: rows of each logical matrix in one group.
        groups: repetitions of the block (query groups, heads; 1 for ``[gate; up]``).
    """

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    groups: int

    def __post_init__(self) -> None:
        if len(self.names) != len(self.sizes) or not self.names:
            raise ValueError(f"FusedRows needs one size per name, got names {self.names} and sizes {self.sizes}")
        if self.groups < 1 or min(self.sizes) < 1:
            raise ValueError(f"FusedRows needs groups >= 1 and sizes >= 1, got groups={self.groups}, sizes={self.sizes}")

    @property
    def block(self) -> int:
        """Rows of one group (all logical matrices)."""
        return sum(self.sizes)

    @property
    def rows(self) -> int:
        """Rows of the whole fused weight."""
        return self.groups * self.block

    def check(self, t: Tensor) -> None:
        """Raise unless ``t`` is 2-D with exactly :attr:`rows` rows."""
        if t.ndim != 2 or t.size(0) != self.rows:
            raise ValueError(
                f"fused layout {self.names} expects {self.groups} groups * {self.block} rows = {self.rows} rows, "
                f"got a tensor of shape {tuple(t.shape)}"
            )

    def part_shape(self, j: int, cols: int) -> tuple[int, int]:
        """Shape of logical matrix ``j`` of a weight with ``cols`` columns."""
        return self.groups * self.sizes[j], cols

    def part_view(self, t: Tensor, j: int) -> Tensor:
        """A ``[groups, sizes[j], cols]`` view of logical matrix ``j`` inside ``t`` (writable)."""
        self.check(t)
        start = sum(self.sizes[:j])
        return t.view(self.groups, self.block, t.size(1))[:, start : start + self.sizes[j]]

    def part(self, t: Tensor, j: int) -> Tensor:
        """Logical matrix ``j`` of ``t`` as a ``[groups * sizes[j], cols]`` tensor (a copy when
        ``groups > 1``, since its rows are not adjacent)."""
        return self.part_view(t, j).reshape(self.part_shape(j, t.size(1)))

    def split(self, t: Tensor) -> list[Tensor]:
        """All logical matrices of ``t``, in the order of :attr:`names`."""
        return [self.part(t, j) for j in range(len(self.sizes))]

    def merge(self, parts: list[Tensor]) -> Tensor:
        """The fused weight from its logical matrices (inverse of :meth:`split`)."""
        if len(parts) != len(self.sizes):
            raise ValueError(f"fused layout {self.names} merges {len(self.sizes)} parts, got {len(parts)}")
        cols = parts[0].size(1)
        out = parts[0].new_empty(self.rows, cols)
        for j, p in enumerate(parts):
            if tuple(p.shape) != self.part_shape(j, cols):
                raise ValueError(
                    f"part {self.names[j]!r} must be {self.groups} * {self.sizes[j]} x {cols} = "
                    f"{self.part_shape(j, cols)}, got {tuple(p.shape)}"
                )
            self.part_view(out, j).copy_(p.view(self.groups, self.sizes[j], cols))
        return out
