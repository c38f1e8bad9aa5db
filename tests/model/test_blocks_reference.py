"""The towers' blocks against a reference forward written here from their parameters alone.

The other model tests compare the local layers with megatron's, or recomputation with none:
both sides run ``model/blocks.py``, so a wrong residual sign or modulation there passes them.
Here every block's output is recomputed with plain tensor arithmetic from the block's
parameters, read by name (``self_attn.linear_qkv.weight`` ...), with the layouts the layers
document: ``linear_qkv`` rows per head ``[q, k, v]`` (no query groups), ``linear_kv`` per head
``[k, v]``, ``linear_fc1`` ``[gate; up]`` with SiLU on the gate, AdaLN's six chunks
``(shift, scale, gate)`` for attention then FFN, modulation ``x * (1 + scale) + shift``.
Nothing from ``blocks.py``, ``local_layers.py`` or ``attention_core.py`` is called by the
reference.

Tolerance: the blocks run in float64 here and the reference sums in another order
(``einsum`` against the layers' matmuls and fused attention), so the two agree to ~1e-15;
1e-10 leaves room for the summation order and still catches any change of the arithmetic.
"""

import math
from dataclasses import replace

import pytest
import torch
from megatron.core.transformer.transformer_config import TransformerConfig

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model import spec
from wallwm_pretrain.model.blocks import (
    ActionBlock,
    AdaLN,
    CoupledLayer,
    FinalLayer,
    Streams,
    TextLayer,
    VideoBlock,
    key_padding_mask,
)
from wallwm_pretrain.optim.params import uses_muon

H, HEADS, FFN = 16, 4, 24
HD = H // HEADS
SV, SA, L, B = 5, 4, 6, 3
LENGTHS = dict(video=[5, 3, 1], action=[4, 2, 1], text=[6, 4, 1])  # padding in every stream
TOL = dict(rtol=1e-10, atol=1e-10)
CONFIG = spec.build_transformer_config(ModelConfig(hidden_size=H, num_layers=1, num_heads=HEADS, ffn_hidden_size=FFN))


def test_the_block_signatures_resolve_for_typing_tools():
    """The module postpones its annotations (``from __future__ import annotations``), so a broken
    one (``ProcessGroupCollection - None``) would pass every run and break only what reads the
    hints: ``typing.get_type_hints`` (documentation, type checkers). Resolve them all here."""
    import typing

    from megatron.core.process_groups_config import ProcessGroupCollection

    from wallwm_pretrain.model import blocks

    functions = [blocks.key_padding_mask, blocks._modulate, blocks._attend, blocks._ffn, Streams,
                 Streams.with_towers, Streams.pack, Streams.unpack]
    for cls in (AdaLN, TextLayer, VideoBlock, ActionBlock, CoupledLayer, FinalLayer):
        functions += [cls.__init__, cls.forward]
    hints = {f.__qualname__: typing.get_type_hints(f) for f in functions}
    assert hints["_attend"]["kv"] == torch.Tensor | None
    for cls in (TextLayer, VideoBlock, ActionBlock, CoupledLayer):
        assert hints[f"{cls.__name__}.__init__"]["pg_collection"] == ProcessGroupCollection | None
        assert hints[f"{cls.__name__}.__init__"]["recompute_core"] is bool
    assert hints["Streams.unpack"]["return"] is Streams and hints["CoupledLayer.forward"]["return"] is Streams
    assert hints["AdaLN.forward"]["return"] == tuple[torch.Tensor, ...]


# ---- the reference: plain torch arithmetic on a {name: tensor} dict ---------------------------


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased variance, as LayerNorm
    y = (x - mean) / torch.sqrt(var + eps)
    return y if weight is None else y * weight + bias


def silu(x):
    return x * torch.sigmoid(x)


def linear(p, name, x):
    """``x W^T (+ b)`` with ``W`` ``[out, in]``; the bias when the layer has one."""
    y = torch.einsum("...i,oi->...o", x, p[f"{name}.weight"])
    bias = p.get(f"{name}.bias")
    return y if bias is None else y + bias


def attention(q, k, v, key_valid):
    """softmax(q k^T / sqrt(d)) v per head over the valid keys; q ``[sq, b, heads, d]``,
    k and v ``[sk, b, heads, d]``, key_valid ``[b, sk]``; -> ``[sq, b, heads * d]``."""
    scores = torch.einsum("qbhd,kbhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.einsum("bhqk,kbhd->qbhd", probs, v)
    return out.reshape(q.shape[0], q.shape[1], -1)


def self_attention(p, name, x, valid):
    s, b = x.shape[:2]
    q, k, v = linear(p, f"{name}.linear_qkv", x).view(s, b, HEADS, 3, HD).unbind(3)
    return linear(p, f"{name}.linear_proj", attention(q, k, v, valid))


def cross_attention(p, name, x, context, valid):
    q = linear(p, f"{name}.linear_q", x).view(x.shape[0], x.shape[1], HEADS, HD)
    k, v = linear(p, f"{name}.linear_kv", context).view(context.shape[0], context.shape[1], HEADS, 2, HD).unbind(3)
    return linear(p, f"{name}.linear_proj", attention(q, k, v, valid))


def gated_ffn(p, name, x):
    h = linear(p, f"{name}.linear_fc1", x)
    gate, up = h[..., :FFN], h[..., FFN:]
    return linear(p, f"{name}.linear_fc2", silu(gate) * up)


def adaln(p, name, temb):
    m = linear(p, f"{name}.proj", silu(temb))  # [B, 6H]
    return [m[:, i * H:(i + 1) * H] for i in range(6)]  # shift1, scale1, gate1, shift2, scale2, gate2


def modulate(x, shift, scale):
    return x * (1 + scale[None]) + shift[None]


def ref_text_layer(p, x, valid):
    x = x + self_attention(p, "attn", layer_norm(x, p["norm_attn.weight"], p["norm_attn.bias"]), valid)
    return x + gated_ffn(p, "ffn", layer_norm(x, p["norm_ffn.weight"], p["norm_ffn.bias"]))


def ref_video_block(p, video, text, temb, video_valid, text_valid):
    shift1, scale1, gate1, shift2, scale2, gate2 = adaln(p, "adaln", temb)
    x = video + gate1[None] * self_attention(p, "self_attn", modulate(layer_norm(video), shift1, scale1), video_valid)
    x = x + cross_attention(p, "text_attn", layer_norm(x, p["norm_text.weight"], p["norm_text.bias"]), text, text_valid)
    return x + gate2[None] * gated_ffn(p, "ffn", modulate(layer_norm(x), shift2, scale2))


def ref_action_block(p, action, state, video_hidden, text, temb, action_valid, video_valid, text_valid):
    shift1, scale1, gate1, shift2, scale2, gate2 = adaln(p, "adaln", temb)
    norm = lambda x, n: layer_norm(x, p[f"{n}.weight"], p[f"{n}.bias"])  # noqa: E731
    a = action + gate1[None] * self_attention(p, "self_attn", modulate(layer_norm(action), shift1, scale1), action_valid)
    state_valid = torch.ones(action.shape[1], 1, dtype=torch.bool)  # the state token is always there
    a = a + cross_attention(p, "state_attn", norm(a, "norm_state"), state, state_valid)
    a = a + cross_attention(p, "video_attn", norm(a, "norm_video"), video_hidden, video_valid)  # the coupling
    a = a + cross_attention(p, "text_attn", norm(a, "norm_text"), text, text_valid)
    return a + gate2[None] * gated_ffn(p, "ffn", modulate(layer_norm(a), shift2, scale2))


def ref_final_layer(p, x, temb):
    m = linear(p, "modulation", silu(temb))
    shift, scale = m[:, :H], m[:, H:]
    return linear(p, "head", modulate(layer_norm(x), shift, scale))


# ---- inputs ------------------------------------------------------------------------------------


def params(module):
    return {n: t.detach() for n, t in module.state_dict().items() if isinstance(t, torch.Tensor)}


def prepared(module, seed=1):
    """Random weights everywhere (leaving adaLN-Zero's zero init and the norms' unit init, so
    every term of the forward counts), in float64."""
    module.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype) + (1.0 if p.ndim == 1 else 0.0))
    return module


def valid(n, lengths):
    return torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]


def streams(seed=2):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    return Streams(
        video=rand(SV, B, H), action=rand(SA, B, H), text=rand(L, B, H), state=rand(1, B, H),
        temb_video=rand(B, H), temb_action=rand(B, H),
        video_mask=key_padding_mask(valid(SV, LENGTHS["video"])),
        action_mask=key_padding_mask(valid(SA, LENGTHS["action"])),
        text_mask=key_padding_mask(valid(L, LENGTHS["text"])),
    )


def close(actual, expected):
    torch.testing.assert_close(actual, expected, **TOL)


# ---- the blocks against the reference ------------------------------------------------------------


@pytest.fixture(params=[False, True], ids=["core", "recomputed-core"])
def recompute_core(request):
    return request.param


def test_reference_attention_is_the_textbook_formula():
    """The reference itself on a hand-worked case: one head of width 1, two keys, one masked."""
    q = torch.tensor([[[[2.0]]]])  # [sq=1, b=1, heads=1, d=1]
    k = torch.tensor([[[[1.0]]], [[[3.0]]]])
    v = torch.tensor([[[[10.0]]], [[[20.0]]]])
    w = torch.softmax(torch.tensor([2.0, 6.0]), 0)
    assert attention(q, k, v, torch.tensor([[True, True]])).item() == pytest.approx(10 * w[0] + 20 * w[1])
    assert attention(q, k, v, torch.tensor([[True, False]])).item() == pytest.approx(10.0)


def test_video_block_matches_the_reference(recompute_core):
    block = prepared(VideoBlock(CONFIG, 1, recompute_core))
    s = streams()
    expected = ref_video_block(params(block), s.video, s.text, s.temb_video, valid(SV, LENGTHS["video"]),
                               valid(L, LENGTHS["text"]))
    close(block(s), expected)


def test_action_block_matches_the_reference(recompute_core):
    block = prepared(ActionBlock(CONFIG, 1, recompute_core))
    s = streams()
    video_hidden = torch.randn(SV, B, H, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = ref_action_block(params(block), s.action, s.state, video_hidden, s.text, s.temb_action,
                                valid(SA, LENGTHS["action"]), valid(SV, LENGTHS["video"]), valid(L, LENGTHS["text"]))
    close(block(s, video_hidden), expected)


def test_action_block_reads_the_coupling_from_its_argument_not_the_video_stream():
    """The coupling's keys are the video block output handed in; the stream's video input is
    not read by the action block at all."""
    block = prepared(ActionBlock(CONFIG, 1))
    s = streams()
    video_hidden = torch.randn(SV, B, H, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    out = block(s, video_hidden)
    close(block(s.with_towers(torch.zeros_like(s.video), s.action), video_hidden), out)
    assert not torch.allclose(block(s, video_hidden + 1.0), out)


def test_text_layer_matches_the_reference(recompute_core):
    layer = prepared(TextLayer(CONFIG, 1, recompute_core))
    s = streams()
    close(layer(s.text, s.text_mask), ref_text_layer(params(layer), s.text, valid(L, LENGTHS["text"])))


def test_final_layer_matches_the_reference():
    layer = prepared(FinalLayer(H, 7))
    s = streams()
    close(layer(s.video, s.temb_video), ref_final_layer(params(layer), s.video, s.temb_video))


def test_coupled_layer_feeds_the_video_block_output_to_the_action_block():
    layer = prepared(CoupledLayer(CONFIG, 1))
    s = streams()
    p = params(layer)
    vv, av, tv = valid(SV, LENGTHS["video"]), valid(SA, LENGTHS["action"]), valid(L, LENGTHS["text"])
    pv = {n[len("video."):]: t for n, t in p.items() if n.startswith("video.")}
    pa = {n[len("action."):]: t for n, t in p.items() if n.startswith("action.")}
    video = ref_video_block(pv, s.video, s.text, s.temb_video, vv, tv)
    action = ref_action_block(pa, s.action, s.state, video, s.text, s.temb_action, av, vv, tv)
    out = layer(s)
    close(out.video, video)
    close(out.action, action)
    for name in ("text", "state", "temb_video", "temb_action", "video_mask", "action_mask", "text_mask"):
        assert getattr(out, name) is getattr(s, name), name


def test_masked_keys_change_nothing():
    """Padding is masked in every attention: changing padded video, action and caption
    positions leaves the outputs at real positions as they were (the reference checks the
    values; this pins that padded keys are not read at all)."""
    layer = prepared(CoupledLayer(CONFIG, 1))
    s = streams()
    out = layer(s)
    noise = lambda x, n, lengths: torch.where(valid(n, lengths).T[:, :, None], x, x + 5.0)  # noqa: E731
    t = replace(s, video=noise(s.video, SV, LENGTHS["video"]), action=noise(s.action, SA, LENGTHS["action"]),
                text=noise(s.text, L, LENGTHS["text"]))
    out2 = layer(t)
    real_v, real_a = valid(SV, LENGTHS["video"]).T, valid(SA, LENGTHS["action"]).T
    close(out2.video[real_v], out.video[real_v])
    close(out2.action[real_a], out.action[real_a])


def test_blocks_hold_the_plain_core_unless_recomputation_is_asked_for():
    """Recomputation gives the same values (above), so only the core's type tells the default:
    no recomputation (its extra backward cost) unless ``recompute_core`` is passed."""
    from wallwm_pretrain.model.attention_core import LocalFusedCoreAttention
    from wallwm_pretrain.model.recompute import RecomputedLocalCoreAttention

    for cls in (TextLayer, VideoBlock, ActionBlock, CoupledLayer):
        for kwargs, core in (({}, LocalFusedCoreAttention), (dict(recompute_core=True), RecomputedLocalCoreAttention)):
            cores = {type(m) for n, m in cls(CONFIG, 1, **kwargs).named_modules() if n.endswith("core_attention")}
            assert cores == {core}, (cls.__name__, kwargs)


# ---- init, marks, and the state token ----------------------------------------------------------


def test_adaln_starts_at_zero_and_splits_into_six_chunks():
    ada = AdaLN(H)
    assert ada.proj.weight.shape == (6 * H, H) and ada.proj.bias.shape == (6 * H,)
    assert not ada.proj.weight.any() and not ada.proj.bias.any()
    prepared(ada)
    temb = torch.randn(B, H, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    chunks = ada(temb)
    assert len(chunks) == 6
    # in the order (shift, scale, gate) of attention, then of the FFN
    for got, want in zip(chunks, adaln({f"adaln.{n}": t for n, t in params(ada).items()}, "adaln", temb)):
        close(got, want)


def test_fresh_blocks_start_with_their_gated_paths_closed():
    """adaLN-Zero: a fresh video block adds only its (ungated) caption cross-attention, a fresh
    final layer is the head on the plain norm."""
    torch.manual_seed(0)
    block = VideoBlock(CONFIG, 1).double()
    s = streams()
    p = params(block)
    text_only = s.video + cross_attention(p, "text_attn", layer_norm(s.video, p["norm_text.weight"], p["norm_text.bias"]),
                                          s.text, valid(L, LENGTHS["text"]))
    close(block(s), text_only)
    final = FinalLayer(H, 7).double()
    assert not final.modulation.weight.any() and not final.modulation.bias.any()
    close(final(s.video, s.temb_video), linear(params(final), "head", layer_norm(s.video)))


def test_only_the_output_head_is_marked_for_adamw():
    final = FinalLayer(H, 7)
    assert all(getattr(p, "use_adamw", None) is True for p in final.head.parameters())
    assert not any(hasattr(p, "use_adamw") for p in final.modulation.parameters())
    # what the mark does: the head's matrix leaves Muon's group, the modulation's stays
    assert not uses_muon(final.head.weight) and uses_muon(final.modulation.weight)


def test_state_token_attention_ignores_its_query_side():
    """Known and kept (changing it alters checkpoints): the state token is the single key of its
    cross-attention, so the softmax is 1 whatever the query. The output is
    ``linear_proj(v(state))``: the query side (``state_attn.linear_q`` and ``norm_state``, which
    only feeds it) gets exactly zero gradient and is dead weight."""
    block = prepared(ActionBlock(CONFIG, 1))
    s = streams()
    video_hidden = torch.randn(SV, B, H, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    p = params(block)
    a = torch.randn(SA, B, H, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    state_valid = torch.ones(B, 1, dtype=torch.bool)
    out = cross_attention(p, "state_attn", a, s.state, state_valid)
    v = linear(p, "state_attn.linear_kv", s.state).view(1, B, HEADS, 2, HD)[..., 1, :].reshape(1, B, H)
    close(out, linear(p, "state_attn.linear_proj", v).expand(SA, B, H))
    block(s, video_hidden).square().sum().backward()
    dead = ["state_attn.linear_q.weight", "norm_state.weight", "norm_state.bias"]
    grads = dict(block.named_parameters())
    for name in dead:
        assert grads[name].grad is not None and not grads[name].grad.any(), name
    assert grads["state_attn.linear_kv.weight"].grad.any()


# ---- the bias path: megatron's layers with biases return them apart ------------------------------


BIAS_CONFIG = TransformerConfig(**{**{f: getattr(CONFIG, f) for f in (
    "num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size", "gated_linear_unit", "activation_func",
    "init_method_std", "hidden_dropout", "attention_dropout", "use_cpu_initialization", "params_dtype", "bf16")},
    "add_bias_linear": True})


def test_blocks_add_the_bias_megatron_returns_apart(single_process):
    """megatron's attention and MLP with ``add_bias_linear`` return the output projection's bias
    separately (``skip_bias_add``): the blocks must add it once. The reference reads every
    bias by name, the input projections' included."""
    pg = single_process.pg_collection
    s = streams()
    vv, av, tv = valid(SV, LENGTHS["video"]), valid(SA, LENGTHS["action"]), valid(L, LENGTHS["text"])
    torch.manual_seed(0)
    layer = prepared(CoupledLayer(BIAS_CONFIG, 1, pg_collection=pg))
    p = params(layer)
    assert "video.self_attn.linear_proj.bias" in p and "action.ffn.linear_fc2.bias" in p
    pv = {n[len("video."):]: t for n, t in p.items() if n.startswith("video.")}
    pa = {n[len("action."):]: t for n, t in p.items() if n.startswith("action.")}
    video = ref_video_block(pv, s.video, s.text, s.temb_video, vv, tv)
    out = layer(s)
    close(out.video, video)
    close(out.action, ref_action_block(pa, s.action, s.state, video, s.text, s.temb_action, av, vv, tv))
    text = prepared(TextLayer(BIAS_CONFIG, 1, pg_collection=pg))
    close(text(s.text, s.text_mask), ref_text_layer(params(text), s.text, tv))
