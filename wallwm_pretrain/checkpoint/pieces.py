"""Where a rank's tensor sits inside a whole (canonical, single-process) tensor.

A sharded checkpoint stores *pieces*: boxes of canonical tensors, each with the canonical
tensor's name, its global shape and the box's offsets in it. What a rank holds is described by
a :class:`TensorView`: per dimension, the ordered segments of the canonical tensor that the
rank's tensor concatenates. That covers every layout of this project with one rule:

- a tensor-parallel slice with megatron's partition stride ``s``: ``s`` segments along the
  partition dimension (:func:`tp_segments`);
- one logical matrix (Q, K, V, gate, up) of a fused weight: one row segment per group
  (:func:`fused_part_segments`), composed with a tensor-parallel cut where both apply
  (:func:`compose`);
- a flat range of a tensor (ZeRO-1 AdamW shards): the boxes of that row-major range
  (:func:`flat_boxes`), each mapped through the view.

Saving cuts a rank's tensor into pieces (:func:`view_pieces`, :func:`flat_pieces`); loading
asks a reader for exactly the boxes a rank needs (:func:`read_view`, :func:`read_flat`), so a
rank of any layout reads only its own share. Plain tensor slicing, no communication. The
pieces of every rank, held in one process, are a source too (:class:`MemorySource`): the
whole state in one process is built from them (:mod:`.optim.whole`, the gathered export).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple, Optional, Protocol, Sequence

import torch
from torch import Tensor

Segment = tuple[int, int, int]
"""``(local start, global start, length)`` along one dimension."""

BoxReader = Callable[[str, Sequence[int], Sequence[int]], Tensor]
"""``read(name, offsets, sizes)``: that box of canonical tensor ``name``."""


class Piece(NamedTuple):
    """One box of canonical tensor ``name`` (of ``global_shape``) at ``offsets``."""

    name: str
    global_shape: tuple[int, ...]
    offsets: list[int]
    tensor: Tensor


class PieceSource(Protocol):
    """Where loading reads canonical tensors from (a sharded checkpoint)."""

    def shape(self, name: str) -> Optional[tuple[int, ...]]:
        """The global shape of ``name``, or None when the checkpoint does not hold it."""

    def read(self, name: str, offsets: Sequence[int], sizes: Sequence[int]) -> Tensor:
        """One box of canonical tensor ``name`` (on the CPU, in its stored dtype)."""

    def keys(self, prefix: str) -> list[str]:
        """The rest of every stored name that starts with ``prefix``, sorted."""


@dataclass(frozen=True)
class TensorView:
    """A rank's tensor as segments of canonical tensor ``name``, one segment list per dim.

    Local coordinates along a dimension run through the segments in order, without gaps.
    """

    name: str
    global_shape: tuple[int, ...]
    dims: tuple[tuple[Segment, ...], ...]

    @property
    def local_shape(self) -> tuple[int, ...]:
        return tuple(sum(n for _, _, n in segs) for segs in self.dims)


def whole(name: str, shape: Sequence[int]) -> TensorView:
    """The view of a rank that holds all of ``name``."""
    shape = tuple(int(s) for s in shape)
    return TensorView(name, shape, tuple(((0, 0, n),) for n in shape))


def tp_view(name: str, local_shape: Sequence[int], dim: int, stride: int, rank: int, size: int) -> TensorView:
    """The view of tensor-parallel rank ``rank`` holding its slice (``local_shape``) of ``name``."""
    shape = [int(s) for s in local_shape]
    shape[dim] *= size
    dims = [((0, 0, n),) for n in shape]
    dims[dim] = tp_segments(shape[dim], stride, rank, size)
    return TensorView(name, tuple(shape), tuple(dims))


def is_whole(view: TensorView) -> bool:
    """Whether the view covers its whole canonical tensor (a replicated tensor)."""
    return view.local_shape == view.global_shape


def pieces_of(view: TensorView, t: Tensor) -> list[Piece]:
    """:func:`view_pieces` as :class:`Piece` records."""
    return [Piece(view.name, view.global_shape, off, box) for off, box in view_pieces(view, t)]


def tp_segments(global_len: int, stride: int, rank: int, size: int) -> tuple[Segment, ...]:
    """Segments of tensor-parallel rank ``rank`` of ``size`` along a partition dimension of
    ``global_len`` cut into ``stride * size`` equal pieces (piece ``j * size + rank`` is the
    rank's ``j``-th, as megatron's partition stride lays them out)."""
    if global_len % (stride * size):
        raise ValueError(f"length {global_len} does not split into stride * tp = {stride} * {size} pieces")
    piece = global_len // (stride * size)
    return tuple((j * piece, (j * size + rank) * piece, piece) for j in range(stride))


def fused_part_segments(groups: int, sizes: Sequence[int], part: int) -> tuple[Segment, ...]:
    """Row segments of logical matrix ``part`` of a fused weight made of ``groups`` blocks of
    ``sizes`` rows (see ``optim.fused.FusedRows``)."""
    block, start, n = sum(sizes), sum(sizes[:part]), sizes[part]
    return tuple((g * n, g * block + start, n) for g in range(groups))


def compose(outer: Sequence[Segment], inner: Sequence[Segment]) -> tuple[Segment, ...]:
    """Segments from local to global coordinates when ``inner`` maps local to intermediate and
    ``outer`` maps intermediate to global coordinates."""
    out = []
    for local, mid, n in inner:
        out += [(local + lo, g, length) for lo, g, length in _split(outer, mid, n)]
    return tuple(out)


def _split(segs: Sequence[Segment], start: int, n: int) -> Iterator[Segment]:
    """Local range ``[start, start + n)`` cut at segment bounds: (offset in the range, global
    start, length)."""
    for local, glob, length in segs:
        a, b = max(start, local), min(start + n, local + length)
        if a < b:
            yield a - start, glob + a - local, b - a


def map_box(view: TensorView, lo: Sequence[int], size: Sequence[int]) -> list[tuple[tuple[slice, ...], list[int], list[int]]]:
    """A box of the rank's tensor as boxes of the canonical tensor.

    Returns:
        ``(slices into the local box, global offsets, sizes)`` for each canonical box.
    """
    per_dim = [list(_split(segs, a, n)) for segs, a, n in zip(view.dims, lo, size)]
    out = []
    for combo in itertools.product(*per_dim):
        out.append(
            (
                tuple(slice(o, o + n) for o, _, n in combo),
                [g for _, g, _ in combo],
                [n for _, _, n in combo],
            )
        )
    return out


def view_pieces(view: TensorView, t: Tensor) -> list[tuple[list[int], Tensor]]:
    """``(global offsets, box)`` pieces of the rank's whole tensor ``t``."""
    if tuple(t.shape) != view.local_shape:
        raise ValueError(f"{view.name}: tensor of shape {tuple(t.shape)} does not match its view {view.local_shape}")
    return [(off, t[sl]) for sl, off, _ in map_box(view, [0] * t.dim(), view.local_shape)]


def flat_boxes(shape: Sequence[int], a: int, b: int) -> Iterator[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Boxes ``(offsets, sizes)`` that cover the row-major element range ``[a, b)`` of a tensor
    of ``shape``, in memory order (at most 2 * ndim - 1 boxes)."""
    if a >= b:
        return
    if not shape:
        yield (), ()
        return
    inner = math.prod(shape[1:])
    r0, c0 = divmod(a, inner)
    r1, c1 = divmod(b, inner)
    if r0 == r1:
        for off, size in flat_boxes(shape[1:], c0, c1):
            yield (r0, *off), (1, *size)
        return
    if c0:
        for off, size in flat_boxes(shape[1:], c0, inner):
            yield (r0, *off), (1, *size)
        r0 += 1
    if r1 > r0:
        yield (r0, *([0] * (len(shape) - 1))), (r1 - r0, *shape[1:])
    if c1:
        for off, size in flat_boxes(shape[1:], 0, c1):
            yield (r1, *off), (1, *size)


def flat_pieces(view: TensorView, values: Tensor, start: int) -> list[Piece]:
    """Pieces of a 1-D run of the rank's tensor: ``values`` are elements ``start ...`` of it in
    row-major order (a ZeRO shard's part of one parameter)."""
    out, pos = [], 0
    for lo, size in flat_boxes(view.local_shape, start, start + values.numel()):
        n = math.prod(size)
        box = values[pos : pos + n].view(size)
        pos += n
        out += [Piece(view.name, view.global_shape, off, box[sl]) for sl, off, _ in map_box(view, lo, size)]
    return out


def read_view(
    view: TensorView, read: BoxReader, lo: Optional[Sequence[int]] = None, size: Optional[Sequence[int]] = None
) -> Tensor:
    """The rank's tensor (or its box ``lo``/``size``) read box by box from the canonical one."""
    lo = [0] * len(view.dims) if lo is None else list(lo)
    size = list(view.local_shape) if size is None else list(size)
    parts = map_box(view, lo, size)
    if len(parts) == 1:
        _, off, sizes = parts[0]
        return read(view.name, off, sizes)
    first = read(view.name, parts[0][1], parts[0][2])
    out = torch.empty(size, dtype=first.dtype)
    out[parts[0][0]] = first
    for sl, off, sizes in parts[1:]:
        out[sl] = read(view.name, off, sizes)
    return out


def read_flat(view: TensorView, read: BoxReader, a: int, b: int) -> Tensor:
    """Elements ``[a, b)`` (row-major) of the rank's tensor, read from the canonical one."""
    parts = [read_view(view, read, lo, size).reshape(-1) for lo, size in flat_boxes(view.local_shape, a, b)]
    return torch.cat(parts) if len(parts) != 1 else parts[0]


StoredBox = tuple[Sequence[int], Sequence[int], Callable[[tuple[slice, ...]], Tensor]]
"""``(offsets, sizes, fetch)`` of a stored piece; ``fetch(slices)`` reads that part of it."""


def fill_box(offsets: Sequence[int], sizes: Sequence[int], dtype: torch.dtype, stored: Iterable[StoredBox]) -> Tensor:
    """The box ``offsets``/``sizes`` of a canonical tensor, assembled from its stored pieces.

    Raises:
        ValueError: the stored pieces do not cover the box exactly once (says how much they cover).
    """
    out = torch.empty([int(s) for s in sizes], dtype=dtype)
    covered = 0
    for poff, psize, fetch in stored:
        lo = [max(o, p) for o, p in zip(offsets, poff)]
        hi = [min(o + s, p + q) for o, s, p, q in zip(offsets, sizes, poff, psize)]
        if any(a >= b for a, b in zip(lo, hi)):
            continue
        out[tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offsets))] = fetch(
            tuple(slice(a - p, b - p) for a, b, p in zip(lo, hi, poff))
        )
        covered += math.prod(b - a for a, b in zip(lo, hi))
    if covered != math.prod(sizes):
        raise ValueError(f"pieces cover {covered} of {math.prod(sizes)} elements of the box at {list(offsets)} of size {list(sizes)}")
    return out


class MemorySource:
    """A :class:`PieceSource` over pieces held in memory: every rank's pieces gathered to one
    process, or a whole state cut into one piece per tensor.

    Raises:
        ValueError: two pieces of one tensor that disagree on its shape or dtype.
    """

    def __init__(self, pieces: Iterable[Piece]) -> None:
        self.pieces: dict[str, list[Piece]] = {}
        for p in pieces:
            held = self.pieces.setdefault(p.name, [])
            if held and (held[0].global_shape != p.global_shape or held[0].tensor.dtype != p.tensor.dtype):
                raise ValueError(f"{p.name}: pieces disagree on its shape or dtype ({held[0].global_shape} vs {p.global_shape})")
            held.append(p)

    def shape(self, name: str) -> Optional[tuple[int, ...]]:
        held = self.pieces.get(name)
        return tuple(held[0].global_shape) if held else None

    def keys(self, prefix: str) -> list[str]:
        return sorted(n[len(prefix):] for n in self.pieces if n.startswith(prefix))

    def read(self, name: str, offsets: Sequence[int], sizes: Sequence[int]) -> Tensor:
        held = self.pieces.get(name)
        if not held:
            raise KeyError(f"no piece of tensor {name!r}")
        stored = [(p.offsets, p.tensor.shape, lambda sl, t=p.tensor: t[sl]) for p in held]
        try:
            return fill_box(offsets, sizes, held[0].tensor.dtype, stored)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def read_whole(self, name: str) -> Tensor:
        shape = self.shape(name)
        return self.read(name, [0] * len(shape), shape)
