"""The fused attention core against megatron-core's unfused ``DotProductAttention`` and the local
unfused reference: outputs and gradients with key padding (a fully padded sample included),
query groups, self- and cross-attention shapes; a fully padded sample attends uniformly as
megatron's does; no [s, s] score matrix is allocated; what the core does not reproduce is refused.

Tolerance: rtol=1e-5, atol=1e-6 (fp32). The fused kernel sums the softmax block by block with a
running maximum (online softmax) and recomputes the probabilities in backward, so its sums run
in another order than the unfused ``baddbmm -> softmax -> bmm``. The largest difference measured
on these inputs (outputs and gradients, whose entries reach a few units) is 9.5e-7 absolute: a
few fp32 ulp (eps = 1.2e-7) of the largest entries; rtol covers those, atol the entries near 0.
"""

import dataclasses

import pytest
import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from torch.profiler import ProfilerActivity, profile

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model import spec
from wallwm_pretrain.model.attention_core import FusedCoreAttention, LocalFusedCoreAttention, fused_attention
from wallwm_pretrain.model.local_layers import UnfusedLocalCoreAttention

TOL = dict(rtol=1e-5, atol=1e-6)
HEADS, HEAD_DIM, BATCH = 4, 8, 3


def config(query_groups: int = HEADS, **overrides):
    cfg = ModelConfig(hidden_size=HEADS * HEAD_DIM, num_layers=1, num_heads=HEADS, ffn_hidden_size=64)
    return dataclasses.replace(spec.build_transformer_config(cfg), num_query_groups=query_groups, **overrides)


def inputs(sq: int, sk: int, groups: int, seed: int = 0):
    """q, k, v ([s, b, heads, head_dim]) and megatron's [b, 1, 1, sk] mask (True = masked): sample 0
    whole, sample 1 with its last keys padded, sample 2 with every key padded."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(sq, BATCH, HEADS, HEAD_DIM, generator=g)
    k, v = (torch.randn(sk, BATCH, groups, HEAD_DIM, generator=g) for _ in range(2))
    lengths = torch.tensor([sk, max(1, sk // 2), 0])
    mask = (torch.arange(sk)[None] >= lengths[:, None])[:, None, None, :]
    return q, k, v, mask


def run(core, q, k, v, mask):
    """Output and the gradients of q, k, v for a loss that weighs every output element differently."""
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = core(*xs, mask)
    weights = torch.linspace(-1.0, 2.0, out.numel()).view(out.shape)
    (out * weights).sum().backward()
    return out.detach(), [torch.zeros_like(x) if x.grad is None else x.grad for x in xs]  # None: not read


def assert_same(a, b):
    (out_a, grads_a), (out_b, grads_b) = a, b
    torch.testing.assert_close(out_a, out_b, **TOL)
    for name, ga, gb in zip("qkv", grads_a, grads_b):
        torch.testing.assert_close(ga, gb, **TOL, msg=name)


SHAPES = [(7, 7), (5, 9), (6, 1)]  # self-attention; cross-attention; the one-key state token


@pytest.mark.parametrize("groups", [4, 2])
@pytest.mark.parametrize("sq,sk", SHAPES)
def test_fused_core_equals_megatrons_dot_product_attention(single_process, groups, sq, sk):
    cfg = config(groups)
    kwargs = dict(config=cfg, layer_number=1, attn_mask_type=AttnMaskType.padding, attention_type="self",
                  softmax_scale=None, cp_comm_type=None, pg_collection=single_process.pg_collection)
    megatron, fused = DotProductAttention(**kwargs), FusedCoreAttention(**kwargs)
    q, k, v, mask = inputs(sq, sk, groups)
    reference = run(megatron, q, k, v, mask)
    result = run(fused, q, k, v, mask)
    assert_same(result, reference)
    assert torch.isfinite(result[0]).all() and all(torch.isfinite(g).all() for g in result[1])
    if sk > 1:  # the comparison is not trivial: the padded keys change the result
        assert not torch.allclose(run(fused, q, k, v, None)[0][:, 1], result[0][:, 1], **TOL)
    else:  # one key: exactly megatron's zero query and key gradients (the softmax is 1 whatever they are)
        assert torch.equal(reference[1][0], torch.zeros_like(q)) and torch.equal(result[1][0], torch.zeros_like(q))
        assert torch.equal(result[1][1], torch.zeros_like(k))


@pytest.mark.parametrize("groups", [4, 2])
@pytest.mark.parametrize("sq,sk", SHAPES)
def test_local_fused_core_equals_the_unfused_reference(groups, sq, sk):
    cfg = config(groups, softmax_scale=0.3)  # a set softmax_scale is honoured
    q, k, v, mask = inputs(sq, sk, groups, seed=1)
    assert_same(run(LocalFusedCoreAttention(cfg), q, k, v, mask), run(UnfusedLocalCoreAttention(cfg), q, k, v, mask))


def test_a_fully_padded_sample_attends_uniformly():
    """megatron's -10000 in every score of the row: a flat softmax, i.e. the mean of the values,
    gradient 1/sk to every value and none to the queries and keys. Finite, never NaN."""
    q, k, v, mask = inputs(5, 6, HEADS)
    out, (gq, gk, gv) = run(LocalFusedCoreAttention(config()), q, k, v, mask)
    uniform = v[:, 2].mean(dim=0).reshape(HEADS * HEAD_DIM)
    torch.testing.assert_close(out[:, 2], uniform.expand(5, -1), **TOL)
    assert torch.equal(gq[:, 2], torch.zeros_like(gq[:, 2])) and torch.equal(gk[:, 2], torch.zeros_like(gk[:, 2]))
    weights = torch.linspace(-1.0, 2.0, out.numel()).view(out.shape)[:, 2].view(5, HEADS, HEAD_DIM)
    torch.testing.assert_close(gv[:, 2], (weights.sum(0) / 6).expand(6, -1, -1), **TOL)
    # the other samples are untouched by it
    alone, _ = run(LocalFusedCoreAttention(config()), q[:, :2], k[:, :2], v[:, :2], mask[:2])
    torch.testing.assert_close(out[:, :2], alone, **TOL)


def _largest_allocation(fn) -> tuple[int, set[str]]:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = list(prof.events())
    return max(e.cpu_memory_usage for e in events), {e.name for e in events}


def test_no_score_matrix_is_allocated():
    """Forward and backward at s = 2048 allocate nothing near one head's [s, s] fp32 scores (16 MiB);
    the unfused reference, measured the same way, does (the measure can fail). The kernel's scratch
    is per thread, so the thread count is pinned."""
    s, threads = 2048, torch.get_num_threads()
    q, k, v, mask = inputs(s, s, HEADS)
    q, k, v, mask = q[:, :1, :1], k[:, :1, :1], v[:, :1, :1], mask[:1]  # one sample, one head
    cfg = dataclasses.replace(config(), num_attention_heads=1, num_query_groups=1)
    torch.set_num_threads(2)
    try:
        fused, names = _largest_allocation(lambda: run(LocalFusedCoreAttention(cfg), q, k, v, mask))
        unfused, _ = _largest_allocation(lambda: run(UnfusedLocalCoreAttention(cfg), q, k, v, mask))
    finally:
        torch.set_num_threads(threads)
    scores = s * s * 4
    assert unfused >= scores
    assert fused < scores / 4, f"the fused core allocated {fused} bytes at once; one [s, s] score matrix is {scores}"
    assert {"aten::_scaled_dot_product_flash_attention_for_cpu",
            "aten::_scaled_dot_product_flash_attention_for_cpu_backward"} <= names
    assert not names & {"aten::bmm", "aten::baddbmm", "aten::_softmax"}


def test_the_plain_function_matches_the_core_and_checks_its_inputs():
    q, k, v, mask = inputs(5, 6, 2)
    core = LocalFusedCoreAttention(config(2))
    torch.testing.assert_close(fused_attention(q, k, v, ~mask[:, 0, 0]), core(q, k, v, mask), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"key_valid must be a bool \[b, s_k\]"):
        fused_attention(q, k, v, ~mask[:, 0, 0, :5])
    with pytest.raises(ValueError, match="multiple"):
        fused_attention(q, k[:, :, :1].expand(-1, -1, 3, -1), v[:, :, :1].expand(-1, -1, 3, -1))


def test_refuses_what_it_does_not_reproduce(single_process):
    q, k, v, mask = inputs(5, 6, HEADS)
    core = LocalFusedCoreAttention(config())
    with pytest.raises(ValueError, match=r"key-padding mask \[b, 1, 1, s_k\]"):
        core(q, k, v, mask.expand(-1, -1, 5, -1))  # a [sq, sk] mask
    with pytest.raises(ValueError, match="key-padding mask"):
        core(q, k, v, mask.float())
    with pytest.raises(ValueError, match="attention_dropout"):
        LocalFusedCoreAttention(config(attention_dropout=0.1))
    kwargs = dict(config=config(), layer_number=1, attention_type="self", softmax_scale=None, cp_comm_type=None,
                  pg_collection=single_process.pg_collection)
    with pytest.raises(ValueError, match="key-padding masks only"):
        FusedCoreAttention(attn_mask_type=AttnMaskType.causal, **kwargs)
    fused = FusedCoreAttention(attn_mask_type=AttnMaskType.padding, **kwargs)
    with pytest.raises(ValueError, match="attention biases"):
        fused(q, k, v, mask, attention_bias=torch.zeros(1))
    with pytest.raises(ValueError, match="this rank holds 4 query and 4 key/value heads"):
        fused(q[:, :, :2], k, v, mask)
