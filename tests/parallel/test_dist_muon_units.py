"""Distributed Muon's parts without processes: fused-weight layouts, the ownership plan, batched
Newton-Schulz, Polar Express, the single-process split reference, ZeRO AdamW at DP1, and the
distributed optimizer on a one-rank group."""

from __future__ import annotations

import pytest
import torch

from wallwm_pretrain.checkpoint.optim import as_source, gather_whole_state, merge_pieces, optimizer_pieces
from wallwm_pretrain.config import OptimConfig
from wallwm_pretrain.optim import (
    FusedRows,
    LocalMatrices,
    Muon,
    ReplicatedOptimizerSet,
    POLAR_EXPRESS_COEFFICIENTS,
    adamw_rms_scale,
    newton_schulz,
    newton_schulz_flops,
    ns_variant,
    split_parameters,
)
from wallwm_pretrain.optim.newton_schulz import step_coefficients
from wallwm_pretrain.optim.distributed.muon import BATCH_MIN_SIDE, DistMuon
from wallwm_pretrain.optim.groups import OptimizerGroups
from wallwm_pretrain.optim.distributed.adamw import ZeroAdamW, merge_adamw_state
from wallwm_pretrain.optim.distributed.optimizer_set import DistributedOptimizerSet
from wallwm_pretrain.optim.distributed.layout import FusedLayout
from wallwm_pretrain.optim.distributed.plan import (
    LogicalMatrix,
    assign_homes,
    bucketize,
    fingerprint,
    home_loads,
    logical_matrices,
)

QKV = FusedRows(("q", "k", "v"), (4, 2, 2), 3)  # 3 query groups of [q q k v] heads of 2 rows


# -- fused rows ------------------------------------------------------------------------------
def test_fused_rows_split_follows_the_group_layout_and_merges_back():
    w = torch.arange(24 * 5, dtype=torch.float32).reshape(24, 5)
    q, k, v = QKV.split(w)
    assert q.shape == (12, 5) and k.shape == (6, 5) and v.shape == (6, 5)
    # group g holds rows [8g, 8g+4) of Q, then 2 of K, then 2 of V
    assert torch.equal(q, torch.cat([w[0:4], w[8:12], w[16:20]]))
    assert torch.equal(k, torch.cat([w[4:6], w[12:14], w[20:22]]))
    assert torch.equal(v, torch.cat([w[6:8], w[14:16], w[22:24]]))
    assert torch.equal(QKV.merge([q, k, v]), w)
    view = QKV.part_view(w, 1)
    view.zero_()  # the view writes into the weight
    assert w[4:6].abs().sum() == 0 and w[0:4].abs().sum() > 0


def test_fused_rows_errors_show_the_arithmetic():
    with pytest.raises(ValueError, match=r"3 groups \* 8 rows = 24 rows"):
        QKV.split(torch.zeros(20, 5))
    with pytest.raises(ValueError, match=r"3 \* 2 x 5"):
        QKV.merge([torch.zeros(12, 5), torch.zeros(5, 5), torch.zeros(6, 5)])


def test_single_process_muon_orthogonalises_each_logical_matrix():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(24, 10))
    start = w.detach().clone()
    g = torch.randn(24, 10)
    w.grad = g.clone()
    lr, wd = 0.1, 0.5
    opt = Muon([w], lr=lr, weight_decay=wd, momentum=0.0, nesterov=False, fused={w: QKV})
    opt.step()
    assert opt.ns_calls == 3
    parts = [start_part * (1 - lr * wd) - lr * adamw_rms_scale(*gp.shape) * newton_schulz(gp)
             for start_part, gp in zip(QKV.split(start), QKV.split(g))]
    torch.testing.assert_close(w.detach(), QKV.merge(parts), rtol=0, atol=1e-6)
    whole = start * (1 - lr * wd) - lr * adamw_rms_scale(24, 10) * newton_schulz(g)
    assert (whole - w.detach()).abs().max() > 1e-2  # one fused matrix is another update


def test_muon_refuses_fused_layouts_with_a_slicing_hook():
    class Half(LocalMatrices):
        pass

    w = torch.nn.Parameter(torch.zeros(24, 4))
    with pytest.raises(ValueError, match="optim.distributed"):
        Muon([w], fused={w: QKV}, matrices=Half())
    short = torch.nn.Parameter(torch.zeros(20, 4))
    with pytest.raises(ValueError, match="24 rows"):
        Muon([short], fused={short: QKV})


# -- megatron layouts --------------------------------------------------------------------------
def _block():
    import torch.nn.functional as F
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
    from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.identity_op import IdentityOp
    from megatron.core.transformer.mlp import MLP, MLPSubmodules
    from megatron.core.transformer.transformer_config import TransformerConfig

    cfg = TransformerConfig(num_layers=1, hidden_size=24, num_attention_heads=4, num_query_groups=2,
                            ffn_hidden_size=36, gated_linear_unit=True, activation_func=F.silu,
                            add_bias_linear=False, use_cpu_initialization=True)
    m = torch.nn.Module()
    m.attn = SelfAttention(cfg, SelfAttentionSubmodules(linear_qkv=ColumnParallelLinear, core_attention=DotProductAttention,
                                                        linear_proj=RowParallelLinear, q_layernorm=IdentityOp,
                                                        k_layernorm=IdentityOp), layer_number=1)
    m.mlp = MLP(cfg, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear))
    return m


def test_fused_layouts_of_megatron_modules(single_process):
    from wallwm_pretrain.optim.distributed.layout import fused_layouts

    m = _block()
    layouts = fused_layouts(m)
    assert set(layouts) == {"attn.linear_qkv.weight", "mlp.linear_fc1.weight"}
    qkv = layouts["attn.linear_qkv.weight"]
    assert qkv.local == qkv.whole == FusedRows(("q", "k", "v"), (12, 6, 6), 2)
    assert layouts["mlp.linear_fc1.weight"].whole == FusedRows(("gate", "up"), (36, 36), 1)
    # megatron's own split of a QKV activation agrees with the layout: feed the identity
    x = torch.eye(24)[:, None, :]  # [s=24, b=1, h]
    mixed, _ = m.attn.linear_qkv(x)
    q_heads, k_heads, _ = m.attn.get_query_key_value_tensors(x)
    q, k, _ = qkv.whole.split(m.attn.linear_qkv.weight.detach())
    torch.testing.assert_close(q_heads.reshape(24, -1), x[:, 0] @ q.T)
    torch.testing.assert_close(k_heads.reshape(24, -1), x[:, 0] @ k.T)
    # megatron splits fc1's output into gate and up halves
    gate, up = layouts["mlp.linear_fc1.weight"].whole.split(m.mlp.linear_fc1.weight.detach())
    out, _ = m.mlp.linear_fc1(x)
    torch.testing.assert_close(out[:, 0], torch.cat([x[:, 0] @ gate.T, x[:, 0] @ up.T], -1))


def test_query_groups_that_do_not_split_over_tp_are_refused(single_process):
    from wallwm_pretrain.optim.distributed.layout import fused_layouts

    m = _block()
    m.attn.world_size = 4  # as if built at TP4: 2 query groups over 4 ranks
    with pytest.raises(ValueError, match=r"num_query_groups=2 does not split over tp=4 \(2 = 0 \* 4 \+ 2\)"):
        fused_layouts(m, tp=1)


# -- plan ------------------------------------------------------------------------------------
def _m(key, rows, cols):
    return LogicalMatrix(key, key, -1, rows, cols, None, 1)


def test_lpt_plan_is_deterministic_balanced_and_spreads_the_largest():
    shapes = [(64, 64)] * 5 + [(32, 96)] * 7 + [(13, 7), (200, 40), (40, 200), (5, 300)]
    mats = [_m(f"w{i}", r, c) for i, (r, c) in enumerate(shapes)]
    world = 4
    plan = assign_homes(mats, world)
    assert plan == assign_homes(list(reversed(mats)), world)  # independent of the input order
    assert fingerprint(plan) == fingerprint(assign_homes(mats, world))
    assert [m.cost for m in plan] == sorted((m.cost for m in mats), reverse=True)
    assert len({m.home for m in plan[:world]}) == world
    loads = home_loads(plan, world)
    lower_bound = max(sum(m.cost for m in mats) / world, max(m.cost for m in mats))
    assert max(loads) <= 4 / 3 * lower_bound  # Graham's LPT bound
    assert newton_schulz_flops(64, 64) == 4 * 64**3 + 2 * 64**3


def test_buckets_keep_the_plan_order_and_size():
    plan = assign_homes([_m(f"w{i}", 10, 10) for i in range(7)], 2)
    buckets = bucketize(plan, 250)
    assert [m for b in buckets for m in b] == plan
    assert [len(b) for b in buckets] == [3, 3, 1]
    assert len(bucketize(plan, 10**9)) == 1
    with pytest.raises(ValueError):
        bucketize(plan, 0)


def test_buckets_carry_nothing_over_a_closed_bucket():
    """A bucket closes once it holds bucket_elems elements, and the next starts from zero."""
    sizes = [(10, 10), (9, 11), (1, 1), (199, 1), (1, 1), (5, 10)]  # 100, 99, 1, 199, 1, 50 elements
    buckets = bucketize([_m(f"w{i}", r, c) for i, (r, c) in enumerate(sizes)], 200)
    assert [[m.numel for m in b] for b in buckets] == [[100, 99, 1], [199, 1], [50]]
    assert [len(b) for b in bucketize([_m(f"w{i}", 2, 2) for i in range(3)], 1)] == [1, 1, 1]  # 1 is allowed


def test_home_loads_sum_each_ranks_costs():
    plan = assign_homes([_m("a", 8, 8), _m("b", 4, 4), _m("c", 2, 2), _m("d", 2, 2)], 3)
    assert [(m.key, m.home) for m in plan] == [("a", 0), ("b", 1), ("c", 2), ("d", 2)]
    cost = lambda s: 6 * s**3  # noqa: E731  4 s^2 l + 2 s^3 for a square s x s
    assert home_loads(plan, 3) == [cost(8), cost(4), 2 * cost(2)]
    assert home_loads(plan, 4) == [cost(8), cost(4), 2 * cost(2), 0]


def test_the_fingerprint_is_sixteen_hex_digits_of_the_plan():
    import hashlib

    plan = assign_homes([_m("a", 3, 5), LogicalMatrix("q[k]", "q", 1, 4, 2, 0, 1)], 2)
    text = "a:3x5:None:1:0;q[k]:4x2:0:1:1"  # key:rows x cols:tp_dim:stride:home, in plan order
    assert fingerprint(plan) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_logical_matrices_are_frozen_values():
    import dataclasses

    m = _m("a", 2, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.home = 1
    assert {m, _m("a", 2, 3)} == {m}  # hashable: a plan can key a dict


def test_default_bucket_is_four_mebi_elements():
    from wallwm_pretrain.optim.distributed.plan import DEFAULT_BUCKET_ELEMS

    assert DEFAULT_BUCKET_ELEMS == 4 * 1024 * 1024  # 16 MiB of fp32 per transfer


def test_plan_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"duplicate logical matrix keys: \['a', 'b'\]"):
        assign_homes([_m("a", 2, 2), _m("b", 2, 2), _m("a", 3, 3), _m("c", 2, 2), _m("b", 2, 2)], 2)
    many = [_m(k, 2, 2) for k in "gfedcba"] * 2  # seven keys twice: the first five are named
    with pytest.raises(ValueError, match=r"duplicate logical matrix keys: \['a', 'b', 'c', 'd', 'e'\]$"):
        assign_homes(many, 2)
    with pytest.raises(ValueError, match="world must be >= 1, got 0"):
        assign_homes([_m("a", 2, 2)], 0)
    assert [m.home for m in assign_homes([_m("a", 2, 2)], 1)] == [0]


def test_a_logical_matrix_pieces_follow_its_split_dimension():
    """Home unset until assign_homes; one rank's piece of a 12 x 8 matrix at TP4."""
    rows0 = LogicalMatrix("r", "r", -1, 12, 8, 0, 1)
    cols1 = LogicalMatrix("c", "c", -1, 12, 8, 1, 1)
    whole = LogicalMatrix("w", "w", -1, 12, 8, None, 1)
    assert rows0.home == -1
    assert (rows0.piece_shape(4), cols1.piece_shape(4), whole.piece_shape(4)) == ((3, 8), (12, 2), (12, 8))
    assert (rows0.piece_numel(4), cols1.piece_numel(4), whole.piece_numel(4)) == (24, 24, 96)
    assert all(type(n) is int for n in (*rows0.piece_shape(4), rows0.piece_numel(4), cols1.piece_shape(4)[1]))


def _marked(shape, dim, stride=1):
    p = torch.nn.Parameter(torch.zeros(shape))
    p.tensor_model_parallel, p.partition_dim, p.partition_stride = True, dim, stride
    return p


def test_logical_matrices_at_tp1_are_whole_and_unmarked_strides_are_one():
    named = {"col": _marked((8, 5), 0, 2), "row": _marked((5, 3), 1)}
    got = {m.key: (m.rows, m.cols, m.tp_dim, m.stride) for m in logical_matrices(named, {}, 1, True)}
    assert got == {"col": (8, 5, None, 1), "row": (5, 3, None, 1)}  # TP1: every rank holds the whole
    plain = torch.nn.Parameter(torch.zeros(4, 6))
    plain.tensor_model_parallel, plain.partition_dim = True, 1  # no partition_stride attribute
    assert logical_matrices({"p": plain}, {}, 2, True)[0].stride == 1
    fused = {"kv": FusedLayout(FusedRows(("k", "v"), (1, 1), 2), FusedRows(("k", "v"), (1, 1), 4))}
    with pytest.raises(ValueError, match=r"kv: a fused weight must be split along rows \(partition_dim 0\), got 1"):
        logical_matrices({"kv": _marked((8, 2), 1)}, fused, 2, True)


def test_logical_matrices_use_global_shapes_and_split_fused_pieces():
    named = {"qkv": _marked((12, 5), 0), "fc1": _marked((8, 5), 0, 2), "proj": _marked((5, 3), 1), "rep": torch.zeros(7, 2)}
    fused = {
        "qkv": FusedLayout(FusedRows(("q", "k", "v"), (2, 1, 1), 3), FusedRows(("q", "k", "v"), (2, 1, 1), 6)),
        "fc1": FusedLayout(FusedRows(("gate", "up"), (4, 4), 1), FusedRows(("gate", "up"), (8, 8), 1)),
    }
    got = {m.key: (m.rows, m.cols, m.tp_dim, m.stride) for m in logical_matrices(named, fused, 2, True)}
    assert got == {
        "qkv[q]": (12, 5, 0, 1), "qkv[k]": (6, 5, 0, 1), "qkv[v]": (6, 5, 0, 1),
        "fc1[gate]": (8, 5, 0, 1), "fc1[up]": (8, 5, 0, 1),
        "proj": (5, 6, 1, 1), "rep": (7, 2, None, 1),
    }
    whole = {m.key: (m.rows, m.cols, m.stride) for m in logical_matrices(named, fused, 2, False)}
    assert whole["fc1"] == (16, 5, 2) and whole["qkv"] == (24, 5, 1)


# -- Newton-Schulz ---------------------------------------------------------------------------
def test_batched_newton_schulz_is_bit_identical_to_one_at_a_time_in_fp32():
    """The exactness of distributed Muon rests on this (CPU, fp32, one thread as in the proof
    runs): stacking same-shape matrices of sides >= BATCH_MIN_SIDE into one call changes no bit."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for shape in [(16, 24), (24, 24), (24, 36), (36, 24), (17, 37), (40, 16), (64, 160), (160, 64)]:
            assert min(shape) >= BATCH_MIN_SIDE
            x = torch.randn(5, *shape)
            batched = newton_schulz(x)
            for i in range(5):
                assert torch.equal(batched[i], newton_schulz(x[i])), shape
    finally:
        torch.set_num_threads(threads)


def test_dist_muon_batches_large_shapes_and_keeps_small_ones_exact():
    torch.manual_seed(0)
    opt = DistMuon({"w": torch.nn.Parameter(torch.zeros(2, 2))}, OptimizerGroups.single())
    mats = [torch.randn(24, 40) for _ in range(3)] + [torch.randn(11, 37) for _ in range(3)] + [torch.randn(5, 5)]
    out = opt._ns(mats, opt.param_groups[0])
    assert opt.ns_batched == 3  # only the three 24 x 40
    for m, o in zip(mats, out):
        assert torch.equal(o, newton_schulz(m))


def test_polar_express_uses_the_published_schedule():
    coefficients, norm_scale = ns_variant("polar_express")
    assert norm_scale == 1.01 and len(coefficients) == 8
    a, b, c = coefficients[0]
    assert (a * 1.01, b * 1.01**3, c * 1.01**5) == pytest.approx((8.28721201814563, -23.595886519098837, 17.300387312530933))
    assert coefficients[-1] == (1.875, -1.25, 0.375)
    assert step_coefficients(POLAR_EXPRESS_COEFFICIENTS, 10)[9] == (1.875, -1.25, 0.375)
    assert step_coefficients((3.4445, -4.775, 2.0315), 2) == [(3.4445, -4.775, 2.0315)] * 2
    with pytest.raises(ValueError, match="one of"):
        ns_variant("cubic")


def test_polar_express_lands_closer_to_the_polar_factor_than_the_quintic():
    torch.manual_seed(1)
    g = torch.randn(64, 160, dtype=torch.float64)
    coefficients, norm_scale = ns_variant("polar_express")
    pe = torch.linalg.svdvals(newton_schulz(g, steps=5, dtype="float32", coefficients=coefficients, norm_scale=norm_scale))
    quintic = torch.linalg.svdvals(newton_schulz(g, steps=5, dtype="float32"))
    assert (pe - 1).abs().max() < 0.5 * (quintic - 1).abs().max()
    # and it converges: eight steps are within 1e-3 of 1
    pe8 = torch.linalg.svdvals(newton_schulz(g, steps=8, dtype="float32", coefficients=coefficients, norm_scale=norm_scale))
    assert (pe8 - 1).abs().max() < 1e-3


# -- the distributed optimizer on one rank ---------------------------------------------------
class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(10, 24, bias=False)
        self.proj = torch.nn.Linear(24, 10)
        self.emb = torch.nn.Embedding(7, 10)
        self.emb.weight.use_adamw = True
        self.norm = torch.nn.LayerNorm(10)


def _tiny_pair(**set_kwargs):
    torch.manual_seed(0)
    a = _Tiny()
    b = _Tiny()
    b.load_state_dict(a.state_dict())
    cfg = OptimConfig(lr=0.02, adamw_lr=0.003, weight_decay=0.01, warmup_steps=2, min_lr_ratio=0.1)
    ref = ReplicatedOptimizerSet(dict(a.named_parameters()), split_parameters(a), cfg, 8, "float32", fused={"qkv.weight": QKV})
    fused = {"qkv.weight": FusedLayout(QKV, QKV)}
    dist_set = DistributedOptimizerSet(dict(b.named_parameters()), split_parameters(b), cfg, 8, "float32",
                                    OptimizerGroups.single(), fused=fused, **set_kwargs)
    return a, ref, b, dist_set


def _grads(model, step):
    g = torch.Generator().manual_seed(step)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize("mode", ["owner", "gather", "local"])
def test_one_rank_distributed_set_equals_the_single_process_set(mode):
    a, ref, b, dset = _tiny_pair(mode=mode, bucket_elems=100)
    for step in range(6):
        for model, opt in ((a, ref), (b, dset)):
            _grads(model, step)
            opt.step()
            opt.zero_grad()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert dset.lrs() == ref.lrs()
    # the merged state is the single-process state, and either set loads the other's
    merged = gather_whole_state(dset)
    assert torch.equal(merged["optimizers"]["muon"]["state"][0]["momentum_buffer"],
                       ref.state_dict()["optimizers"]["muon"]["state"][0]["momentum_buffer"])
    ref.load_state_dict(merged)
    optimizer_pieces(dset).load(*as_source(ref.state_dict()))
    dset.load_state_dict(dset.state_dict())


def test_zero_adamw_at_dp1_is_torch_adamw():
    torch.manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s)) for s in [(3, 4), (5,), (2, 2)]]
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    ref = torch.optim.AdamW([{"params": ps[:2], "weight_decay": 0.1}, {"params": ps[2:], "weight_decay": 0.0}], lr=0.01)
    zero = ZeroAdamW({f"p{i}": q for i, q in enumerate(qs)}, [(["p0", "p1"], 0.1), (["p2"], 0.0)],
                     lr=0.01, betas=(0.9, 0.999), eps=1e-8, dp_group=None, dp_rank=0, dp_size=1)
    for step in range(4):
        for group in (ps, qs):
            g = torch.Generator().manual_seed(step)
            for p in group:
                p.grad = torch.randn(p.shape, generator=g)
        ref.step()
        zero.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p, q)
    whole = merge_adamw_state([zero.sharded_state()])
    assert torch.equal(whole["p1"]["exp_avg_sq"], ref.state[ps[1]]["exp_avg_sq"])


def test_merge_names_missing_ranks():
    _, _, b, dset = _tiny_pair(mode="gather")
    _grads(b, 0)
    dset.step()
    structure, pieces = optimizer_pieces(dset).save()
    # as if the rank holding the first elements of an AdamW moment were lost
    i = next(i for i, p in enumerate(pieces) if p.name.endswith("/exp_avg") and p.tensor.dim() == 1 and p.tensor.numel() > 1)
    p = pieces[i]
    pieces[i] = p._replace(offsets=[p.offsets[0] + 1], tensor=p.tensor[1:])
    with pytest.raises(ValueError, match="cover"):
        merge_pieces([(structure, pieces)])


def test_merge_follows_a_given_name_order():
    a, ref, b, dset = _tiny_pair(mode="owner")
    for model, opt in ((a, ref), (b, dset)):
        _grads(model, 0)
        opt.step()
    names = [n for n, _ in b.named_parameters()]
    merged = gather_whole_state(dset, order=list(reversed(names)))
    assert merged["split"]["muon"] == ["proj.weight", "qkv.weight"]
    momentum = merged["optimizers"]["muon"]["state"]
    assert torch.equal(momentum[0]["momentum_buffer"], ref.optimizers["muon"].state[a.proj.weight]["momentum_buffer"])
    assert merged["split"]["adamw_no_decay"] == list(reversed(ref.split.adamw_no_decay))


class _StageA(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(10, 24, bias=False)
        self.emb = torch.nn.Embedding(7, 10)
        self.emb.weight.use_adamw = True


class _StageB(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(24, 10)


class _Whole(torch.nn.Module):
    def __init__(self, a, b):
        super().__init__()
        self.qkv, self.emb, self.proj = a.qkv, a.emb, b.proj


def _same_state(got, want, path="state"):
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), path
    elif isinstance(want, dict):
        assert set(got) == set(want), f"{path}: {sorted(got)} vs {sorted(want)}"
        for k in want:
            _same_state(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (x, y) in enumerate(zip(got, want)):
            _same_state(x, y, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} vs {want!r}"


def test_stages_with_different_group_kinds_merge_into_the_single_process_state():
    """Stage 0 has only AdamW's decay group, stage 1 only its no-decay group: the merged state
    (hyper-parameters and per-group scheduler fields included) is the whole model's, and it
    loads back into both stages."""
    import copy

    cfg = OptimConfig(lr=0.02, adamw_lr=0.003, weight_decay=0.01, warmup_steps=2, min_lr_ratio=0.1)
    torch.manual_seed(0)
    a, b = _StageA(), _StageB()
    whole = copy.deepcopy(_Whole(a, b))
    whole.emb.weight.use_adamw = True  # deepcopy drops attributes set on a Parameter
    ref = ReplicatedOptimizerSet(dict(whole.named_parameters()), split_parameters(whole), cfg, 8, "float32",
                       fused={"qkv.weight": QKV})

    def stage_sets(models):
        return [DistributedOptimizerSet(dict(m.named_parameters()), split_parameters(m), cfg, 8, "float32",
                                     OptimizerGroups(None, None, None, 0, 1, 0, 1, pp_rank=i),
                                     fused={"qkv.weight": FusedLayout(QKV, QKV)} if i == 0 else None)
                for i, m in enumerate(models)]

    sets = stage_sets([a, b])
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        grads = {n: torch.randn(p.shape, generator=g) for n, p in whole.named_parameters()}
        for n, p in whole.named_parameters():
            p.grad = grads[n].clone()
        for m in (a, b):
            for n, p in m.named_parameters():
                p.grad = grads[n].clone()
        for opt in [ref] + sets:
            opt.step()
    merged = merge_pieces([optimizer_pieces(opt).save() for opt in sets])
    _same_state(merged, ref.state_dict())
    # and back: fresh stages load the merged state and continue exactly as the reference
    a2, b2 = copy.deepcopy(a), copy.deepcopy(b)
    a2.emb.weight.use_adamw = True
    sets2 = stage_sets([a2, b2])
    for opt in sets2:
        optimizer_pieces(opt).load(*as_source(merged))
    g = torch.Generator().manual_seed(99)
    grads = {n: torch.randn(p.shape, generator=g) for n, p in whole.named_parameters()}
    for m in (whole, a2, b2):
        for n, p in m.named_parameters():
            p.grad = grads[n].clone()
    for opt in [ref] + sets2:
        opt.step()
    for n, p in whole.named_parameters():
        mine = dict(a2.named_parameters()).get(n, dict(b2.named_parameters()).get(n))
        assert torch.equal(mine, p), n


def test_dist_muon_rejects_a_bad_mode():
    with pytest.raises(ValueError, match="owner"):
        DistMuon({"w": torch.nn.Parameter(torch.zeros(2, 2))}, OptimizerGroups.single(), mode="gram")

