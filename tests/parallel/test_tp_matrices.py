"""Slicing and reassembling TP-sharded matrices, Muon's matrix hook and the global grad norm,
all without processes."""

import pytest
import torch

from wallwm_pretrain.config import load_config
from wallwm_pretrain.optim import LocalMatrices, Muon, adamw_rms_scale, newton_schulz
from wallwm_pretrain.optim.grad_norm import clip_by_global_norm, global_grad_norm
from wallwm_pretrain.optim.tp_matrices import TensorParallelMatrices, restride, unstride


@pytest.mark.parametrize("dim", [0, 1])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("tp", [2, 4])
def test_restride_then_unstride_is_identity(dim, stride, tp):
    full = torch.arange(16 * 24, dtype=torch.float32).reshape(16, 24)
    slices = [restride(full, dim, stride, r, tp) for r in range(tp)]
    assert all(s.size(dim) == full.size(dim) // tp for s in slices)
    assert torch.equal(unstride(slices, dim, stride), full)


def test_stride_two_gives_each_rank_its_part_of_both_halves():
    # fc1 of a gated MLP: rows [gate; up]; each rank must hold gate rows and the matching up rows
    gate, up = torch.zeros(8, 3), torch.ones(8, 3)
    full = torch.cat([gate, up])
    for rank in range(2):
        mine = restride(full, 0, 2, rank, 2)
        assert torch.equal(mine[:4], gate[4 * rank : 4 * rank + 4])
        assert torch.equal(mine[4:], up[4 * rank : 4 * rank + 4])
    assert not torch.equal(torch.cat([restride(full, 0, 2, r, 2) for r in range(2)]), full)


def test_restride_names_the_factors():
    with pytest.raises(ValueError, match=r"stride \* tp = 2 \* 4 = 8"):
        restride(torch.zeros(12, 4), 0, 2, 0, 4)


def _marked(shape, dim, stride=1):
    p = torch.nn.Parameter(torch.zeros(shape))
    p.tensor_model_parallel, p.partition_dim, p.partition_stride = True, dim, stride
    return p


def test_logical_shape_and_pass_through():
    col, row, rep = _marked((6, 4), 0), _marked((4, 3), 1), torch.nn.Parameter(torch.zeros(5, 5))
    tp2 = TensorParallelMatrices(None, rank=1, size=2)
    assert tp2.logical_shape(col) == (12, 4) and tp2.logical_shape(row) == (4, 6)
    assert tp2.logical_shape(rep) == (5, 5)
    update = torch.randn(5, 5)
    assert tp2.gather(rep, update) is update and tp2.local(rep, update) is update
    tp1 = TensorParallelMatrices(None, rank=0, size=1)  # megatron marks weights at TP1 too
    assert tp1.logical_shape(col) == (6, 4)
    assert tp1.gather(col, update) is update


def test_tensor_parallel_split_is_checked_by_the_config_with_the_arithmetic():
    load_config(None, ["model.num_heads=4", "model.ffn_hidden_size=64", "parallel.tp=2"])
    with pytest.raises(ValueError, match=r"num_heads=6 is not divisible by parallel.tp=4 \(6 = 1 \* 4 \+ 2\)"):
        load_config(None, ["model.hidden_size=96", "model.num_heads=6", "model.ffn_hidden_size=64", "parallel.tp=4"])
    with pytest.raises(ValueError, match="ffn_hidden_size=66"):
        load_config(None, ["model.num_heads=4", "model.ffn_hidden_size=66", "parallel.tp=4"])


def test_global_grad_norm_counts_replicated_grads_on_tp_rank_0_only():
    sharded, replicated = _marked((4, 4), 0), torch.nn.Parameter(torch.zeros(3))
    g_sharded, g_rep = torch.full((4, 4), 2.0), torch.full((3,), 1.0)
    pairs = [(sharded, g_sharded), (replicated, g_rep)]
    cpu = torch.device("cpu")
    rank0 = global_grad_norm(pairs, tp_rank=0, model_parallel_group=None, model_parallel_size=1, device=cpu)
    rank1 = global_grad_norm(pairs, tp_rank=1, model_parallel_group=None, model_parallel_size=1, device=cpu)
    assert rank0.item() == pytest.approx((16 * 4 + 3) ** 0.5)
    assert rank1.item() == pytest.approx((16 * 4) ** 0.5)
    # the group sum of the two ranks' squares is the logical model's norm: 2 slices + 1 replica
    assert (rank0**2 + rank1**2).sqrt().item() == pytest.approx((2 * 16 * 4 + 3) ** 0.5)
    empty = global_grad_norm([(replicated, g_rep)], tp_rank=1, model_parallel_group=None, model_parallel_size=1, device=cpu)
    assert empty.item() == 0.0


def test_clip_by_global_norm():
    grads = [torch.full((2,), 3.0), torch.full((2,), 4.0)]
    norm = torch.tensor(50.0**0.5)
    clip_by_global_norm(grads, norm, 0.0)
    assert grads[0][0] == 3.0
    clip_by_global_norm(grads, norm, 1.0)
    total = torch.cat(grads).norm().item()
    assert total == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError):
        clip_by_global_norm(grads, norm, -1.0)


class _TopHalf(LocalMatrices):
    """This 'rank' holds the top half of a matrix whose bottom-half update is known."""

    def __init__(self, bottom_update):
        self.bottom = bottom_update

    def gather(self, param, update):
        return torch.cat([update, self.bottom])

    def local(self, param, full):
        return full[: param.size(0)]

    def logical_shape(self, param):
        return 2 * param.size(0), param.size(1)


def test_muon_orthogonalises_the_gathered_matrix_and_scales_by_its_shape():
    torch.manual_seed(0)
    top = torch.nn.Parameter(torch.randn(3, 8))
    start = top.detach().clone()
    grad_top, grad_bottom = torch.randn(3, 8), torch.randn(3, 8)
    top.grad = grad_top
    opt = Muon([top], lr=0.1, momentum=0.0, nesterov=False, matrices=_TopHalf(grad_bottom))
    opt.step()
    whole = newton_schulz(torch.cat([grad_top, grad_bottom]))
    expected = start - 0.1 * adamw_rms_scale(6, 8) * whole[:3]
    torch.testing.assert_close(top.detach(), expected)
    alone = start - 0.1 * adamw_rms_scale(3, 8) * newton_schulz(grad_top)
    assert (alone - expected).abs().max() > 1e-2  # the slice alone would be another update
