"""The anchor-noise protocol of action pretraining (``model/anchor_noise.py``) on both towers:
K action draws sharing one video forward are K whole forwards that each see the same anchor-step
video features (losses and gradients), the frozen video tower runs once, under no_grad, and gets
no gradient, K = 1 is the ordinary forward with the video at t*, and the anchor time is the
sampler's."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wan_wallwm_tiny import CFG as WAN_CFG, wan_batch  # noqa: E402

from wallwm_pretrain.batch import Batch  # noqa: E402
from wallwm_pretrain.config import ActionPretrainConfig, ConfigError, ModelConfig, load_config  # noqa: E402
from wallwm_pretrain.model import build_model  # noqa: E402
from wallwm_pretrain.model.anchor_noise import AnchorDraws, anchor_time  # noqa: E402
from wallwm_pretrain.model.flow_matching import FlowNoise, shift_time  # noqa: E402
from wallwm_pretrain.model.freeze import apply_train_parts  # noqa: E402

SMALL_CFG = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                        frame_stride=4, caption_max_bytes=15, video_time_shift=3.0)
STAGE2 = ["action_tower", "time_head"]
# float32 on CPU: the shared-forward and the K-forward computations differ only in summation order
ATOL, RTOL = 1e-6, 1e-5


def small_batch(seed: int = 0, b: int = 3, t: int = 12) -> Batch:
    g = torch.Generator().manual_seed(seed)
    caption = torch.randint(2, 258, (b, 10), generator=g)
    caption[:, 0] = 1
    caption[1, 4:] = 0
    lengths = torch.tensor([t, t - 5, 6][:b])
    return Batch(torch.randint(0, 256, (b, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g),
                 torch.randn(b, t, SMALL_CFG.action_dim, generator=g), torch.randn(b, SMALL_CFG.state_dim, generator=g),
                 lengths, caption, remaining=lengths.float() + torch.tensor([0.0, 9.0, 30.0][:b]))


def setup(tower: str, train_parts=STAGE2, draws: int = 3):
    """A perturbed model (adaLN-Zero gates otherwise hide paths) under the anchor mapping, frozen
    as ``train_parts`` says, and a batch with unequal lengths."""
    base, batch = (SMALL_CFG, small_batch()) if tower == "small" else (WAN_CFG, wan_batch(0))
    cfg = replace(base, video_loss_weight=0.0, train_parts=list(train_parts),
                  action_pretrain=ActionPretrainConfig(mapping="anchor", draws=draws))
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    apply_train_parts(model, cfg)
    return cfg, model, batch


def video_blocks(model, tower):
    if tower == "small":
        return [layer.video for layer in model.layers.values()]
    return list(model.video.blocks.values())


def action_blocks(model, tower):
    if tower == "small":
        return [layer.action for layer in model.layers.values()]
    return list(model.action_layers.values())


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("train_parts", [STAGE2, ["all"]], ids=["video-frozen", "all-trained"])
@pytest.mark.parametrize("tower", ["small", "wan"])
def test_shared_video_forward_gives_the_gradients_of_k_forwards(tower, train_parts):
    """One video forward shared by K = 3 action draws == the mean of K ordinary forwards, each with
    the video at t* and the same video noise, and one action draw (losses and every gradient, to
    1e-6 absolute / 1e-5 relative in float32). With the video tower trained too, its coupling
    gradients from the K draws add up through the one shared graph."""
    cfg, model, batch = setup(tower, train_parts)
    draws = model.sample_noise(batch, torch.Generator().manual_seed(1))
    assert isinstance(draws, AnchorDraws) and draws.count == 3
    assert torch.all(draws.t_video == anchor_time(cfg))
    den = model.loss_counts(batch)  # the data-parallel denominators path, as the trainer passes it
    out = model(batch, noise=draws, loss_denominators=den)
    out["loss"].backward()
    shared = grads(model)
    model.zero_grad(set_to_none=True)
    ref = [model(batch, noise=draws.draw(k), loss_denominators=den) for k in range(3)]
    (sum(r["loss"] for r in ref) / 3).backward()
    separate = grads(model)
    model.zero_grad(set_to_none=True)

    assert out["loss_video"] == 0 and out["loss_action"] > 0 and out["loss_time"] > 0
    for key in ("loss", "loss_action", "loss_time"):
        torch.testing.assert_close(out[key], sum(r[key] for r in ref) / 3, atol=ATOL, rtol=RTOL)
    assert shared.keys() == separate.keys()
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert shared.keys() <= trained
    if train_parts == STAGE2:  # everything trained gets a gradient (with all trained, the video head gets none)
        assert shared.keys() == trained
    for n in shared:
        torch.testing.assert_close(shared[n], separate[n], atol=ATOL, rtol=RTOL, msg=n)
    # the draws are distinct: one draw alone gives other gradients (the check can fail)
    model(batch, noise=draws.draw(0), loss_denominators=den)["loss"].backward()
    alone = grads(model)
    assert max((alone[n] - shared[n]).abs().max() for n in shared) > 1e-4
    if train_parts == ["all"]:  # the video tower learns through the coupling
        assert any(shared[n].abs().max() > 0 for n in shared if n.startswith(("layers.0.video.", "video.blocks.0.")))


@pytest.mark.parametrize("tower", ["small", "wan"])
def test_frozen_video_tower_runs_once_under_no_grad_and_gets_no_gradient(tower):
    cfg, model, batch = setup(tower, STAGE2, draws=4)
    calls = {"video": [], "action": 0}

    def on_video(*_):
        calls["video"].append(torch.is_grad_enabled())

    def on_action(*_):
        calls["action"] += 1

    for block in video_blocks(model, tower):
        block.register_forward_hook(on_video)
    for block in action_blocks(model, tower):
        block.register_forward_hook(on_action)
    out = model(batch, generator=torch.Generator().manual_seed(1))
    layers = cfg.num_layers
    assert calls["video"] == [False] * layers  # each video block once per forward, without autograd
    assert calls["action"] == 4 * layers  # each action block once per draw
    out["loss"].backward()
    frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith(("layers.0.video.", "video.")) for n, _ in frozen)
    assert all(p.grad is None for _, p in frozen)
    assert all(p.grad is not None for _, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("tower", ["small", "wan"])
def test_one_draw_is_the_ordinary_forward_with_the_video_at_the_anchor_time(tower):
    """K = 1: the anchor draws are the symmetric draws with t_video := t* (same generator), and the
    losses and gradients are the ordinary forward's on those draws."""
    cfg, model, batch = setup(tower, STAGE2, draws=1)
    draws = model.sample_noise(batch, torch.Generator().manual_seed(5))
    symmetric = replace(cfg, action_pretrain=ActionPretrainConfig())
    model.cfg = symmetric
    plain = model.sample_noise(batch, torch.Generator().manual_seed(5))
    assert isinstance(plain, FlowNoise) and not torch.equal(plain.t_video, draws.t_video)
    for name in ("noise_video", "t_action", "noise_action"):
        assert torch.equal(getattr(draws, name).reshape(getattr(plain, name).shape), getattr(plain, name)), name
    at_anchor = replace(plain, t_video=torch.full_like(plain.t_video, anchor_time(cfg)))
    ref = model(batch, noise=at_anchor)
    ref["loss"].backward()
    want = grads(model)
    model.zero_grad(set_to_none=True)
    model.cfg = cfg
    out = model(batch, noise=draws)
    out["loss"].backward()
    for key in ("loss", "loss_action", "loss_time"):
        torch.testing.assert_close(out[key], ref[key], atol=ATOL, rtol=RTOL)
    got = grads(model)
    assert got.keys() == want.keys()
    for n in got:
        torch.testing.assert_close(got[n], want[n], atol=ATOL, rtol=RTOL, msg=n)


def test_anchor_time_is_the_samplers_video_time_at_the_anchor_step():
    """t = 1 is noise, t = 0 the data; the sampler's Euler step i feeds the video tower
    shift(1 - i / steps). Step 45 of 50 is 0.1 unshifted, 5 * 0.1 / (1 + 4 * 0.1) at shift 5."""
    cfg = ModelConfig(video_loss_weight=0.0, action_pretrain=ActionPretrainConfig(mapping="anchor"))
    assert anchor_time(cfg) == pytest.approx(0.1)
    shifted = replace(cfg, video_time_shift=5.0)
    assert anchor_time(shifted) == pytest.approx(0.5 / 1.4)
    grid = shift_time(torch.linspace(1.0, 0.0, 51, dtype=torch.float64), 5.0)  # as eval/sampler.py walks
    assert anchor_time(shifted) == pytest.approx(float(grid[45]))


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.action_pretrain.mapping must be symmetric or anchor"):
        ActionPretrainConfig(mapping="anchored")
    with pytest.raises(ConfigError, match=r"anchor_step must be in \[0, schedule_steps=50\)"):
        ActionPretrainConfig(anchor_step=50)
    with pytest.raises(ConfigError, match="draws must be >= 1"):
        ActionPretrainConfig(draws=0)
    with pytest.raises(ConfigError, match="set model.video_loss_weight=0"):
        load_config(None, ["model.action_pretrain.mapping=anchor"])
    with pytest.raises(ConfigError, match="parallel.pp=1"):
        load_config(None, ["model.action_pretrain.mapping=anchor", "model.video_loss_weight=0", "parallel.pp=2"])
    cfg = load_config(None, ["model.action_pretrain.mapping=anchor", "model.video_loss_weight=0",
                             "model.action_pretrain.draws=2", "parallel.tp=2"])
    assert cfg.model.action_pretrain.draws == 2


def test_a_pipeline_stage_refuses_the_anchor_mapping():
    from wallwm_pretrain.model.pipeline_slice import PipelineSlice

    cfg, _, batch = setup("small")
    stage = build_model(cfg, PipelineSlice(0, 1, embed=True, head=False))  # the first of two stages
    with pytest.raises(ValueError, match="parallel.pp=1"):
        stage(batch, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tower", ["small", "wan"])
def test_full_recompute_gives_the_same_gradients(tower):
    """``model.recompute=full`` rebuilds the shared video pass and each action pass in backward
    (everything trained, so the video pass runs with autograd): the same gradients."""
    cfg, model, batch = setup(tower, ["all"])
    draws = model.sample_noise(batch, torch.Generator().manual_seed(2))
    model(batch, noise=draws)["loss"].backward()
    plain = grads(model)
    model.zero_grad(set_to_none=True)
    model.cfg = replace(cfg, recompute="full")
    if tower == "wan":
        model.video.recompute = "full"
    recomputed = []
    for block in action_blocks(model, tower) + video_blocks(model, tower):
        # a pre-hook: checkpoint's recomputation stops once it has rebuilt what backward needs,
        # which can be before a block returns (a forward hook would not fire then)
        block.register_forward_pre_hook(lambda *_: recomputed.append(1))
    model(batch, noise=draws)["loss"].backward()
    assert len(recomputed) == 2 * (3 + 1) * cfg.num_layers  # every block started again in backward
    again = grads(model)
    assert again.keys() == plain.keys()
    for n in plain:
        torch.testing.assert_close(again[n], plain[n], atol=ATOL, rtol=RTOL, msg=n)
