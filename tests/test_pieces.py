"""Geometry of sharded checkpoints: where a rank's tensor sits in the canonical tensor.

Expected values are built by the layouts' own code (megatron-style ``restride``, ``FusedRows``)
or by plain indexing, independently of ``wallwm_pretrain.checkpoint.pieces``.
"""

import itertools
import math

import pytest
import torch

from wallwm_pretrain.optim.tp_matrices import restride
from wallwm_pretrain.optim.fused import FusedRows
from wallwm_pretrain.checkpoint.pieces import (
    TensorView,
    compose,
    flat_boxes,
    flat_pieces,
    fused_part_segments,
    pieces_of,
    read_flat,
    read_view,
    tp_view,
)


def _reader(whole: torch.Tensor):
    def read(name, offsets, sizes):
        return whole[tuple(slice(o, o + s) for o, s in zip(offsets, sizes))].clone()

    return read


def _place(shape, pieces):
    out = torch.full(shape, float("nan"))
    count = torch.zeros(shape)
    for p in pieces:
        sl = tuple(slice(o, o + s) for o, s in zip(p.offsets, p.tensor.shape))
        out[sl] = p.tensor
        count[sl] += 1
    return out, count


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4), (4, 1, 3)])
def test_flat_boxes_cover_every_range_once_in_memory_order(shape):
    n = math.prod(shape)
    flat = torch.arange(n).view(shape)
    for a, b in itertools.combinations(range(n + 1), 2):
        got = torch.cat([flat[tuple(slice(o, o + s) for o, s in zip(off, size))].reshape(-1)
                         for off, size in flat_boxes(shape, a, b)])
        assert torch.equal(got, torch.arange(a, b)), (a, b)
        assert len(list(flat_boxes(shape, a, b))) <= 2 * len(shape) - 1


@pytest.mark.parametrize("dim,stride,size", [(0, 1, 2), (1, 1, 2), (0, 2, 2), (0, 2, 4), (1, 3, 2)])
def test_tensor_parallel_slices_are_their_boxes(dim, stride, size):
    whole = torch.randn(24, 12) if dim == 0 else torch.randn(6, 24)
    pieces = []
    for rank in range(size):
        local = restride(whole, dim, stride, rank, size)
        view = tp_view("w", local.shape, dim, stride, rank, size)
        assert view.global_shape == tuple(whole.shape)
        assert torch.equal(read_view(view, _reader(whole)), local)
        pieces += pieces_of(view, local)
    out, count = _place(whole.shape, pieces)
    assert torch.equal(out, whole) and bool((count == 1).all())


def test_a_fused_part_and_its_tensor_parallel_cut_are_their_boxes():
    layout = FusedRows(("q", "k", "v"), (4, 2, 2), groups=4)
    whole = torch.randn(layout.rows, 6)
    for part in range(3):
        logical = layout.part(whole, part)
        segs = fused_part_segments(layout.groups, layout.sizes, part)
        view = TensorView("w", tuple(whole.shape), (segs, ((0, 0, 6),)))
        assert torch.equal(read_view(view, _reader(whole)), logical)
        for rank in range(2):  # gather mode: this rank's tensor-parallel piece of the part
            local = restride(logical, 0, 1, rank, 2)
            from wallwm_pretrain.checkpoint.pieces import tp_segments

            cut = compose(segs, tp_segments(logical.size(0), 1, rank, 2))
            view = TensorView("w", tuple(whole.shape), (cut, ((0, 0, 6),)))
            assert torch.equal(read_view(view, _reader(whole)), local)


def test_zero_shards_of_a_tensor_parallel_slice_tile_it():
    whole = torch.randn(8, 6)
    pieces = []
    for rank in range(2):
        local = restride(whole, 1, 1, rank, 2)
        view = tp_view("w", local.shape, 1, 1, rank, 2)
        flat = local.reshape(-1)
        for a, b in [(0, 5), (5, 17), (17, 24)]:  # three data-parallel shards of its 24 elements
            pieces += flat_pieces(view, flat[a:b], a)
            assert torch.equal(read_flat(view, _reader(whole), a, b), flat[a:b])
    out, count = _place(whole.shape, pieces)
    assert torch.equal(out, whole) and bool((count == 1).all())
