"""Which rank orthogonalises which logical matrix: the ownership plan of distributed Muon.

Every logical 2-D matrix of a pipeline rank (a whole weight, or one part of a fused weight:
Q, K, V, gate, up) gets one *home* among the pipeline rank's DP x TP ranks. Homes are assigned by
longest-processing-time-first (LPT) on the Newton-Schulz cost ``4 s^2 l + 2 s^3`` per iteration
(s <= l the matrix sides): matrices in decreasing cost, each to the rank with the least cost so
far. LPT's makespan is within 4/3 of the optimum, and the first ``world`` (largest) matrices land
on distinct ranks. The plan depends only on names and shapes, which every rank of the TP x DP group
holds alike, so all ranks compute the same plan without communication (a fingerprint of it is
compared once at start-up).

Buckets cut the plan, in LPT order, into groups of about ``bucket_elems`` elements: the unit of
communication, so the transfers of one bucket can overlap the Newton-Schulz work of another.

Trade-off: balancing flops ignores communication volume and memory, which follow size rather
than cost; for the square-ish matrices of a transformer the two orders nearly agree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from torch import Tensor

from wallwm_pretrain.optim.newton_schulz import newton_schulz_flops
from wallwm_pretrain.optim.distributed.layout import FusedLayout
from wallwm_pretrain.optim.tp_matrices import is_tp_sharded

DEFAULT_BUCKET_ELEMS = 1 << 22  # 4 Mi elements: 16 MiB of fp32 per transfer


@dataclass(frozen=True)
class LogicalMatrix:
    """One matrix that Muon orthogonalises as a whole.

    Attributes:
        key: unique label, the parameter name or ``name[part]`` for a part of a fused weight.
        name: the parameter that holds it.
        part: index of the part in the fused layout, -1 for the whole parameter.
        rows: rows of the whole logical matrix (all tensor-parallel pieces).
        cols: columns of the whole logical matrix.
        tp_dim: dimension along which tensor-parallel ranks hold pieces; None = every rank
            holds the whole matrix (replicated).
        stride: megatron's partition stride of the pieces (1 for every part of a fused weight).
        home: rank, within the pipeline rank's DP x TP group, that owns its momentum and Newton-Schulz.
    """

    key: str
    name: str
    part: int
    rows: int
    cols: int
    tp_dim: int | None
    stride: int
    home: int = -1

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    @property
    def cost(self) -> int:
        return newton_schulz_flops(self.rows, self.cols)

    def piece_numel(self, tp: int) -> int:
        """Elements of one rank's piece."""
        return self.numel // tp if self.tp_dim is not None else self.numel

    def piece_shape(self, tp: int) -> tuple[int, int]:
        if self.tp_dim is None:
            return self.rows, self.cols
        return (self.rows // tp, self.cols) if self.tp_dim == 0 else (self.rows, self.cols // tp)


def logical_matrices(
    named: dict[str, Tensor], fused: dict[str, FusedLayout], tp: int, split_fused: bool
) -> list[LogicalMatrix]:
    """The logical matrices of a pipeline rank's Muon parameters, in parameter order (homes unset).

    Args:
        named: this rank's Muon parameters by name (its tensor-parallel pieces).
        fused: fused row layouts by name (see :func:`~.layout.fused_layouts`).
        tp: tensor-parallel size.
        split_fused: split fused weights into their logical matrices.

    Raises:
        ValueError: a fused weight that is not split along its rows.
    """
    out: list[LogicalMatrix] = []
    for name, p in named.items():
        sharded = tp > 1 and is_tp_sharded(p)
        dim = int(p.partition_dim) if sharded else None
        stride = int(getattr(p, "partition_stride", 1)) if sharded else 1
        layout = fused.get(name) if split_fused else None
        if layout is not None:
            if sharded and dim != 0:
                raise ValueError(f"{name}: a fused weight must be split along rows (partition_dim 0), got {dim}")
            for j, label in enumerate(layout.local.names):
                rows = layout.local.groups * layout.local.sizes[j] * (tp if sharded else 1)
                out.append(LogicalMatrix(f"{name}[{label}]", name, j, rows, p.size(1), 0 if sharded else None, 1))
            continue
        rows, cols = p.size(0), p.size(1)
        if sharded:
            rows, cols = (rows * tp, cols) if dim == 0 else (rows, cols * tp)
        out.append(LogicalMatrix(name, name, -1, rows, cols, dim, stride))
    return out


def assign_homes(matrices: list[LogicalMatrix], world: int) -> list[LogicalMatrix]:
    """LPT assignment of homes; returns the matrices in LPT order (cost down, then key).

    Args:
        matrices: the pipeline rank's logical matrices.
        world: ranks in the pipeline rank's DP x TP group.

    Raises:
        ValueError: ``world < 1`` or duplicate keys.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    keys = [m.key for m in matrices]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate logical matrix keys: {sorted(k for k in set(keys) if keys.count(k) > 1)[:5]}")
    load = [0] * world
    planned = []
    for m in sorted(matrices, key=lambda m: (-m.cost, m.key)):
        home = min(range(world), key=lambda r: (load[r], r))
        load[home] += m.cost
        planned.append(LogicalMatrix(**{**m.__dict__, "home": home}))
    return planned


def bucketize(plan: list[LogicalMatrix], bucket_elems: int) -> list[list[LogicalMatrix]]:
    """Cut the plan (in its order) into buckets of at least one matrix and about
    ``bucket_elems`` elements each (a bucket closes once it reaches the size)."""
    if bucket_elems < 1:
        raise ValueError(f"bucket_elems must be >= 1, got {bucket_elems}")
    buckets: list[list[LogicalMatrix]] = []
    current: list[LogicalMatrix] = []
    size = 0
    for m in plan:
        current.append(m)
        size += m.numel
        if size >= bucket_elems:
            buckets.append(current)
            current, size = [], 0
    if current:
        buckets.append(current)
    return buckets


def fingerprint(plan: list[LogicalMatrix]) -> str:
    """A short digest of the plan, equal on ranks that computed the same plan."""
    text = ";".join(f"{m.key}:{m.rows}x{m.cols}:{m.tp_dim}:{m.stride}:{m.home}" for m in plan)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def home_loads(plan: list[LogicalMatrix], world: int) -> list[int]:
    """Newton-Schulz cost (flops per iteration) per home rank."""
    load = [0] * world
    for m in plan:
        load[m.home] += m.cost
    return load
