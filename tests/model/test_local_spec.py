"""The model built with no process group (local layers) against megatron-core's layers at TP=1:
same state-dict keys and shapes, same initial weights from the same seed, same losses, outputs
and gradients of every parameter (padding, selective recomputation, query groups). And the
megatron-built model hands its tensor-parallel group to every megatron layer.

Tolerance: rtol=1e-6, atol=1e-7 (fp32). Both run the same torch operations in the same order
(the same fused attention core, ``[gate; up]`` SiLU), and on this
machine their results are bit-identical. The margin covers a BLAS that orders the sums of the
linear layers' backward differently (megatron's own autograd function for the linear layers,
torch's matmul backward for the local ones): a few fp32 ulp (eps = 1.2e-7).
"""

import dataclasses
import subprocess
import sys
import warnings
from dataclasses import replace

import pytest
import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model import WallWM, spec
from wallwm_pretrain.model.attention_core import FusedCoreAttention, LocalFusedCoreAttention
from wallwm_pretrain.model.local_layers import LocalMLP
from wallwm_pretrain.model.recompute import RecomputedCoreAttention, RecomputedLocalCoreAttention

K = 4
CFG = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                  frame_stride=K, caption_max_bytes=15)  # captions of at most 16 tokens
TOL = dict(rtol=1e-6, atol=1e-7)


def build(pg_collection=None, **overrides) -> WallWM:
    torch.manual_seed(0)
    return WallWM(replace(CFG, **overrides), pg_collection=pg_collection)


def perturb(model: WallWM) -> WallWM:
    """Leave adaLN-Zero's zero init, so every path (and every parameter) carries gradient."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def batch(t=12):
    """Three samples of different lengths (padded steps and frames) and caption lengths."""
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    actions = torch.randn(3, t, CFG.action_dim, generator=g)
    state = torch.randn(3, CFG.state_dim, generator=g)
    lengths = torch.tensor([t, 7, 3])
    actions = actions * (torch.arange(t)[None, :, None] < lengths[:, None, None])
    caption = torch.randint(2, 258, (3, 10), generator=g)
    caption[:, 0] = 1
    caption[1, 6:] = 0
    caption[2, 3:] = 0
    return frames, actions, state, lengths, caption, lengths.float() + torch.tensor([0.0, 9.0, 20.0])


def pair(pg_collection, **overrides) -> tuple[WallWM, WallWM]:
    """(local, megatron) models holding the same perturbed weights."""
    megatron = perturb(build(pg_collection, **overrides))
    local = build(**overrides)
    local.load_state_dict(megatron.state_dict(), strict=True)
    return local, megatron


def loss_and_grads(model: WallWM):
    model.train()
    out = model(Batch(*batch()), generator=torch.Generator().manual_seed(3))
    out["loss"].backward()
    return out, {n: p.grad for n, p in model.named_parameters()}


def test_local_model_builds_and_runs_without_any_process_group():
    """A fresh interpreter: no torch.distributed, no megatron parallel state, no CPU patches."""
    code = (
        "import torch, torch.distributed as dist\n"
        "from megatron.core import parallel_state as ps\n"
        "from wallwm_pretrain.config import ModelConfig\n"
        "from wallwm_pretrain.model import WallWM\n"
        "from wallwm_pretrain.model.local_layers import LocalSelfAttention\n"
        "cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,\n"
        "                  frame_stride=4, caption_max_bytes=15)\n"
        "m = WallWM(cfg).eval()\n"
        "b = 2\n"
        "with torch.no_grad():\n"
        "    p, a = m.denoise(torch.randn(b, 3, 8, 192), torch.randn(b, 12, 4), torch.rand(b), torch.rand(b),\n"
        "                     torch.randn(b, 8), torch.randint(1, 258, (b, 10)), torch.ones(b, 3, dtype=torch.bool),\n"
        "                     torch.ones(b, 12, dtype=torch.bool))\n"
        "megatron = sorted({type(x).__module__ for x in m.modules() if type(x).__module__.startswith('megatron')})\n"
        "print(dist.is_initialized(), ps.model_parallel_is_initialized(), megatron,\n"
        "      any(isinstance(x, LocalSelfAttention) for x in m.modules()), bool(torch.isfinite(p).all()))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False False [] True True"


def test_every_megatron_layer_is_given_its_group(single_process):
    """Built with the collection, no megatron layer falls back to the global tensor-parallel group
    (megatron warns each time one does)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build(single_process.pg_collection)
    fallbacks = [str(w.message) for w in caught if "tp_group is None" in str(w.message)]
    assert fallbacks == []
    linears = [m for m in model.modules() if isinstance(m, (ColumnParallelLinear, RowParallelLinear))]
    assert linears and all(m.tp_group is single_process.pg_collection.tp for m in linears)


def test_state_dicts_are_interchangeable(single_process):
    local, megatron = build(), build(single_process.pg_collection)
    a, b = local.state_dict(), megatron.state_dict()
    assert list(a) == list(b)  # same keys, same order (megatron's _extra_state entries included)
    assert [n for n, _ in local.named_parameters()] == [n for n, _ in megatron.named_parameters()]
    for name, value in b.items():
        if isinstance(value, torch.Tensor):
            assert a[name].shape == value.shape and a[name].dtype == value.dtype, name
            # megatron's initialisation order and draws, so the same seed gives the same model
            assert torch.equal(a[name], value), name
        else:
            assert a[name] is value is None, name
    # both ways, strictly; and a state dict of tensors only (an export) loads as well
    perturb(megatron)
    local.load_state_dict(megatron.state_dict(), strict=True)
    assert all(torch.equal(x, y) for x, y in zip(local.parameters(), megatron.parameters()))
    megatron.load_state_dict(build().state_dict(), strict=True)
    local.load_state_dict({k: v for k, v in megatron.state_dict().items() if isinstance(v, torch.Tensor)}, strict=True)
    assert all(torch.equal(x, y) for x, y in zip(local.parameters(), build().parameters()))


@pytest.mark.parametrize("recompute", ["none", "selective"])
def test_same_losses_and_gradients(single_process, recompute):
    local, megatron = pair(single_process.pg_collection, recompute=recompute)
    core = RecomputedLocalCoreAttention if recompute == "selective" else LocalFusedCoreAttention
    cores = [m for m in local.modules() if isinstance(m, LocalFusedCoreAttention)]
    assert cores and all(type(m) is core for m in cores)
    # megatron's layers run the fused core too (never megatron's unfused DotProductAttention)
    mcore = RecomputedCoreAttention if recompute == "selective" else FusedCoreAttention
    mcores = [m.core_attention for m in megatron.modules() if hasattr(m, "core_attention")]
    assert len(mcores) == len(cores) and all(type(m) is mcore for m in mcores)
    out_l, grads_l = loss_and_grads(local)
    out_m, grads_m = loss_and_grads(megatron)
    for key in ("loss", "loss_video", "loss_action", "loss_time"):
        torch.testing.assert_close(out_l[key], out_m[key], **TOL, msg=key)
    assert set(grads_l) == set(grads_m)
    for name, g in grads_m.items():
        assert g is not None and grads_l[name] is not None, name
        torch.testing.assert_close(grads_l[name], g, **TOL, msg=name)
    # the comparison is not trivial: every parameter has gradient except those that only feed
    # the queries of the state cross-attention (one key: its softmax is 1 whatever the query)
    assert out_m["loss_time"] > 0 and out_m["loss_action"] > 0
    no_grad = {n for n, g in grads_m.items() if not g.abs().max() > 0}
    assert no_grad == {f"layers.{i}.action.{p}" for i in range(CFG.num_layers)
                       for p in ("norm_state.weight", "norm_state.bias", "state_attn.linear_q.weight")}
    assert max(g.abs().max().item() for g in grads_m.values()) > 1e-3


def test_same_denoised_velocities_with_padding(single_process):
    """Eval-mode outputs at every position (padded ones included) for padded inputs."""
    local, megatron = pair(single_process.pg_collection)
    frames, actions, state, lengths, caption, _ = batch()
    g = torch.Generator().manual_seed(5)
    xt_v = torch.randn(3, 3, 8, 192, generator=g)
    xt_a = torch.randn(actions.shape, generator=g)
    t_v, t_a = torch.rand(3, generator=g), torch.rand(3, generator=g)
    frame_valid = (torch.arange(3) * K)[None] < lengths[:, None]
    action_valid = torch.arange(12)[None] < lengths[:, None]
    with torch.no_grad():
        out_l = local.eval().denoise(xt_v, xt_a, t_v, t_a, state, caption, frame_valid, action_valid)
        out_m = megatron.eval().denoise(xt_v, xt_a, t_v, t_a, state, caption, frame_valid, action_valid)
    for a, b in zip(out_l, out_m):
        torch.testing.assert_close(a, b, **TOL)


def _layer_config(query_groups: int):
    return dataclasses.replace(spec.build_transformer_config(CFG), num_query_groups=query_groups)


def _same_layer_outputs_and_grads(local, megatron, *inputs, **kwargs):
    local.load_state_dict(megatron.state_dict(), strict=True)
    results = []
    for layer in (local, megatron):
        xs = [x.clone().requires_grad_() for x in inputs]
        out, bias = layer(*xs, **kwargs)
        assert bias is None
        out.square().sum().backward()
        results.append((out, [x.grad for x in xs], {n: p.grad for n, p in layer.named_parameters()}))
    (out_l, xg_l, pg_l), (out_m, xg_m, pg_m) = results
    torch.testing.assert_close(out_l, out_m, **TOL)
    for a, b in zip(xg_l, xg_m):
        torch.testing.assert_close(a, b, **TOL)
    assert set(pg_l) == set(pg_m)
    for name, g in pg_m.items():
        torch.testing.assert_close(pg_l[name], g, **TOL, msg=name)


@pytest.mark.parametrize("query_groups", [4, 2])
def test_self_attention_layout_with_query_groups(single_process, query_groups):
    """The per-query-group [q_1 .. q_{h/g}, k, v] rows of linear_qkv, also with fewer groups than heads."""
    config = _layer_config(query_groups)
    torch.manual_seed(0)
    megatron = spec.self_attention(config, 1, pg_collection=single_process.pg_collection)
    torch.manual_seed(0)
    local = spec.self_attention(config, 1)
    assert local.linear_qkv.weight.shape == megatron.linear_qkv.weight.shape == ((4 + 2 * query_groups) * 8, 32)
    assert torch.equal(local.linear_qkv.weight, megatron.linear_qkv.weight)
    perturb(megatron)
    x = torch.randn(7, 3, 32)
    mask = (torch.arange(7)[None] >= torch.tensor([7, 4, 1])[:, None])[:, None, None, :]
    _same_layer_outputs_and_grads(local, megatron, x, attention_mask=mask)


def test_cross_attention_and_mlp(single_process):
    config = _layer_config(4)
    pg = single_process.pg_collection
    x, context = torch.randn(5, 3, 32), torch.randn(6, 3, 32)
    mask = (torch.arange(6)[None] >= torch.tensor([6, 2, 1])[:, None])[:, None, None, :]
    megatron, local = spec.cross_attention(config, 1, pg_collection=pg), spec.cross_attention(config, 1)
    _same_layer_outputs_and_grads(local, megatron, x, attention_mask=mask, key_value_states=context)
    megatron, local = spec.gated_mlp(config, pg), spec.gated_mlp(config)
    assert isinstance(local, LocalMLP)
    _same_layer_outputs_and_grads(local, megatron, x)


def test_local_layers_refuse_options_they_do_not_reproduce():
    config = dataclasses.replace(spec.build_transformer_config(CFG), add_bias_linear=True)
    with pytest.raises(ValueError, match="add_bias_linear"):
        spec.gated_mlp(config)


def test_muon_finds_the_same_fused_weights_in_local_and_megatron_layers(single_process):
    """Q/K/V, K/V and gate/up are orthogonalised as separate matrices in either kind of model."""
    from wallwm_pretrain.optim.distributed.layout import fused_layouts

    local, megatron = fused_layouts(build(), 1), fused_layouts(build(single_process.pg_collection), 1)
    assert local == megatron
    kinds = [name.rsplit(".", 2)[-2] for name in local]
    # per coupled layer: video self + action self (qkv); video-caption, action-state, action-video,
    # action-caption (kv); two FFNs (fc1); plus the caption encoder's one layer (qkv, fc1)
    assert (kinds.count("linear_qkv"), kinds.count("linear_kv"), kinds.count("linear_fc1")) == (5, 8, 5)
