"""Activation recomputation: same loss and gradients as without it, and it really recomputes,
with megatron's layers and with the local ones (a model built without process groups)."""

from dataclasses import replace

import pytest
import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.attention_core import FusedCoreAttention, LocalFusedCoreAttention
from wallwm_pretrain.model.recompute import RecomputedCoreAttention, RecomputedLocalCoreAttention

K = 4
CFG = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                  frame_stride=K, caption_max_bytes=15)  # captions of at most 16 tokens
# cores per coupled layer: video self + caption; action self + state + video + caption
CORES_PER_LAYER = 6


# the attention core class of each kind of layer, and its recomputed form
CORES = {"local": (LocalFusedCoreAttention, RecomputedLocalCoreAttention),
         "megatron": (FusedCoreAttention, RecomputedCoreAttention)}


@pytest.fixture(params=["local", "megatron"])
def groups(request):
    """(kind, pg_collection): None for local layers; megatron's needs one process's groups."""
    if request.param == "local":
        return "local", None
    return "megatron", request.getfixturevalue("single_process").pg_collection


def make_model(recompute: str, pg_collection=None) -> WallWM:
    torch.manual_seed(0)
    model = WallWM(replace(CFG, recompute=recompute), pg_collection=pg_collection)
    with torch.no_grad():  # leave adaLN-Zero so that every path carries gradient
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    return model


def batch(t=12):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    actions = torch.randn(3, t, CFG.action_dim, generator=g)
    state = torch.randn(3, CFG.state_dim, generator=g)
    lengths = torch.tensor([t, 7, 4])
    caption = torch.randint(2, 258, (3, 10), generator=g)
    caption[:, 0] = 1
    caption[2, 5:] = 0
    return frames, actions, state, lengths, caption, lengths.float() + 2.0


def count_core_calls(monkeypatch, kind: str) -> list:
    """Every run of the attention core, through the module or (recomputing) directly."""
    core = CORES[kind][0]
    calls, original = [], core.forward

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(core, "forward", counted)
    return calls


def loss_grads_and_core_calls(recompute: str, monkeypatch, groups):
    kind, pg_collection = groups
    model = make_model(recompute, pg_collection).train()
    calls = count_core_calls(monkeypatch, kind)
    out = model(Batch(*batch()), generator=torch.Generator().manual_seed(3))
    forward_calls = len(calls)
    out["loss"].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out["loss"].detach(), grads, forward_calls, len(calls) - forward_calls


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_recompute_gives_the_same_gradients(groups, mode, monkeypatch):
    ref_loss, ref_grads, ref_fwd, ref_bwd = loss_grads_and_core_calls("none", monkeypatch, groups)
    monkeypatch.undo()
    loss, grads, fwd, bwd = loss_grads_and_core_calls(mode, monkeypatch, groups)
    assert torch.equal(loss, ref_loss)
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=0, atol=1e-7, msg=name)
    assert max(g.abs().max().item() for g in ref_grads.values()) > 1e-3  # gradients are not trivially zero
    # it is not a no-op: attention cores run again during backward
    towers = CFG.num_layers * CORES_PER_LAYER
    assert ref_bwd == 0 and fwd == ref_fwd
    assert bwd == (towers if mode == "full" else ref_fwd)  # full: the coupled layers; selective: every core


def test_selective_swaps_only_the_attention_cores(groups):
    (_, pg_collection), (core, recomputed) = groups, CORES[groups[0]]
    model = make_model("selective", pg_collection)
    cores = [m for m in model.modules() if isinstance(m, core)]
    assert cores and all(isinstance(m, recomputed) for m in cores)
    assert not any(isinstance(m, recomputed) for m in make_model("full", pg_collection).modules())


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_no_recompute_in_eval(groups, mode, monkeypatch):
    kind, pg_collection = groups
    model = make_model(mode, pg_collection).eval()
    calls = count_core_calls(monkeypatch, kind)
    with torch.no_grad():
        model(Batch(*batch()), generator=torch.Generator().manual_seed(3))
    assert len(calls) == CFG.num_layers * CORES_PER_LAYER + CFG.text_layers
