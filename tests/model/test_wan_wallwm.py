"""The dual-tower denoiser on the Wan video tower (``model.video_tower=wan``): it is the
WanTower and the action blocks composed as documented, gradients reach both towers, the video
side never reads actions, pipeline slices pass both towers' streams."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wan_wallwm_tiny import CFG, K, wan_batch  # noqa: E402

from wallwm_pretrain.config import ConfigError, ModelConfig  # noqa: E402
from wallwm_pretrain.model import WallWM, WanWallWM, build_model  # noqa: E402
from wallwm_pretrain.model.blocks import key_padding_mask  # noqa: E402
from wallwm_pretrain.model.embeddings import sinusoidal  # noqa: E402
from wallwm_pretrain.model.flow_matching import shift_time  # noqa: E402
from wallwm_pretrain.model.pipeline_slice import PipelineSlice  # noqa: E402
from wallwm_pretrain.model.wan import coupling_keys  # noqa: E402


def make(cfg=CFG, part=None):
    torch.manual_seed(0)
    return WanWallWM(cfg, part)


def perturbed(model):
    """Every parameter moved (zero-initialised gates and projections otherwise hide paths)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_video_tower_switch_builds_the_right_model():
    assert isinstance(build_model(CFG), WanWallWM)
    assert isinstance(build_model(replace(CFG, video_tower="small")), WallWM)
    with pytest.raises(ConfigError, match="model.video_tower"):
        ModelConfig(video_tower="big")
    with pytest.raises(ConfigError, match="selective"):
        replace(CFG, recompute="selective")


def test_flow_inputs_keep_latent_frame_zero_clean_with_timestep_zero():
    model = make()
    batch = wan_batch(0)
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    u = torch.rand(batch.size, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(noise.t_video, shift_time(u, 5.0))  # the shifted video schedule
    inp = model.flow_inputs(batch, noise)
    assert torch.equal(inp.xt_video[:, :, :, 0], batch.latents[:, :, :, 0])
    t = noise.t_video.view(-1, 1, 1, 1, 1, 1)
    assert torch.allclose(inp.xt_video[:, :, :, 1:], (1 - t) * batch.latents[:, :, :, 1:] + t * noise.noise_video[:, :, :, 1:])
    per_frame = 2 * 3
    assert torch.all(inp.timestep[:, :per_frame] == 0)
    assert torch.allclose(inp.timestep[:, per_frame:], 1000 * noise.t_video[:, None].expand(-1, inp.timestep.shape[1] - per_frame))
    assert inp.video_loss_mask[:, 0].any().item() is False
    assert inp.frame_valid.tolist()[3] == [True, False, False]  # length 3: only latent frame 0 is real


def hand_composition(model, inp):
    """The documented composition, written out from the parts: WanTower forward, action
    embedding, action block i reading the projected coupling keys of Wan block i."""
    video = model.video
    # the Wan tower reads the padded text context with no text mask, as Wan does
    pred_v_tower = video(inp.xt_video, inp.timestep, inp.text_states, frame_valid=inp.frame_valid)
    geo = video.geometry(inp.xt_video, inp.timestep, inp.text_states)
    ws = video.embed(inp.xt_video, inp.timestep, inp.text_states, geo)
    rope = video.rope(geo)
    vmask, tmask = video.masks(geo, inp.frame_valid, None)
    t_steps, h = inp.xt_action.shape[1], CFG.hidden_size
    steps = torch.arange(t_steps)
    # action k carries latent frame index M + k // K (M = 0 outside unified mode)
    frame = inp.history + steps // K
    a = (model.action_in(inp.xt_action) + sinusoidal(frame, h)[None] + model.action_group_pos(steps % K)[None]).transpose(0, 1)
    from wallwm_pretrain.model.blocks import Streams

    per_view = inp.frame_valid.repeat_interleave(geo.tokens // geo.grid[0], dim=1)
    s = Streams(None, a, model.text_in(inp.text_states).transpose(0, 1), model.state_in(inp.state)[None], None,
                model.time_action(inp.t_action), key_padding_mask(torch.cat([per_view] * geo.views, dim=1)),
                key_padding_mask(inp.action_valid), key_padding_mask(inp.text_valid))
    for i in range(CFG.num_layers):
        ws = video.run_block(i, ws, rope, geo, vmask, tmask)
        layer = model.action_layers[str(i)]
        keys = layer.coupling(coupling_keys(ws.video, geo.views))
        s = replace(s, action=layer.block(s, keys))
    pred_a = model.action_out(s.action, s.temb_action).transpose(0, 1)
    return pred_v_tower, video.head(ws, geo), pred_a


@pytest.mark.parametrize("history", [0, 2])
def test_equals_the_hand_composition_of_wan_tower_and_action_blocks(history):
    model = perturbed(make()).eval()
    batch = wan_batch(0, history=history)
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    inp = model.flow_inputs(batch, noise)
    pred_v, pred_a = model.denoise(inp)
    tower_v, hand_v, hand_a = hand_composition(model, inp)
    assert torch.equal(pred_v, tower_v)  # the video side is the WanTower's own forward
    assert torch.equal(pred_v, hand_v)
    assert torch.equal(pred_a, hand_a)
    out = model(batch, noise=noise)
    m = inp.video_loss_mask[:, :, None, None, None, None].permute(0, 2, 3, 1, 4, 5).float()  # [B, 1, 1, N, 1, 1]
    se = ((pred_v - (noise.noise_video - batch.latents)) ** 2 * m).sum()
    count = m.sum() * 2 * 4 * 4 * 6
    assert torch.allclose(out["loss_video"], se / count, rtol=1e-6)
    av = inp.action_valid[..., None].float()
    assert torch.allclose(out["loss_action"], ((pred_a - inp.target_action) ** 2 * av).sum() / (av.sum() * 4), rtol=1e-6)
    assert out["loss_time"] > 0  # the remaining-time head trains on the wan path too
    assert torch.equal(model.loss_counts(batch), torch.tensor([float(count), av.sum().item() * 4, 4.0]))


def test_gradients_reach_both_towers_and_the_action_loss_reaches_the_video_tower():
    model = perturbed(make())
    batch = wan_batch(0)
    out = model(batch, generator=torch.Generator().manual_seed(1))
    out["loss"].backward()
    groups = {}
    for name, p in model.named_parameters():
        key = ".".join(name.split(".")[:3])
        groups[key] = groups.get(key, 0.0) + (0.0 if p.grad is None else float(p.grad.abs().sum()))
    assert all(v > 0 for v in groups.values()), [k for k, v in groups.items() if v == 0]
    model.zero_grad()
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    inp = model.flow_inputs(batch, noise)
    _, pred_a = model.denoise(inp)
    pred_a.square().sum().backward()  # the action side only: its gradient flows back through the coupling
    for i in range(CFG.num_layers):
        block = model.video.blocks[str(i)]
        assert float(block.self_attention.linear_q.weight.grad.abs().sum()) > 0, i
    assert model.video.proj_out.weight.grad is None  # the video head is not on the action path


def test_video_never_reads_actions():
    model = perturbed(make()).eval()
    batch = wan_batch(0)
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    inp = model.flow_inputs(batch, noise)
    pred_v, pred_a = model.denoise(inp)
    other = replace(batch, actions=batch.actions + 3.0, state=batch.state - 1.0)
    noise2 = replace(noise, t_action=1 - noise.t_action, noise_action=noise.noise_action * 2)
    pred_v2, pred_a2 = model.denoise(model.flow_inputs(other, noise2))
    assert torch.equal(pred_v, pred_v2)
    assert not torch.allclose(pred_a, pred_a2)


@pytest.mark.parametrize("history", [0, 2])
def test_two_pipeline_slices_pass_both_towers_and_equal_the_whole_model(history):
    whole = make()
    first = make(part=PipelineSlice(0, 1, embed=True, head=False))
    last = make(part=PipelineSlice(1, 1, embed=False, head=True))
    params = dict(whole.named_parameters())
    for part in (first, last):
        for name, p in part.named_parameters():
            assert torch.equal(p, params[name]), name  # the slices hold the whole model's weights
    batch = wan_batch(0, history=history)
    noise = whole.sample_noise(batch, torch.Generator().manual_seed(1))
    packed = first(batch, noise=noise)
    assert packed.shape == (whole.boundary_seq_length(batch), batch.size, whole.wan.hidden_size)
    out = last(batch, noise=noise, hidden=packed)
    ref = whole(batch, noise=noise)
    for key in ref:
        assert torch.allclose(out[key], ref[key], atol=1e-6), key


def test_batch_without_latents_or_with_wrong_frames_fails_clearly():
    model = make()
    batch = wan_batch(0)
    with pytest.raises(ValueError, match="batch.latents"):
        model(replace(batch, latents=None))
    with pytest.raises(ValueError, match=r"ceil\(12/4\) = 3"):
        model(replace(batch, latents=batch.latents[:, :, :, :2]))
    with pytest.raises(ValueError, match=r"batch.history = 2 history latent frames .* need 2 \+ ceil\(12/4\) = 5"):
        model(replace(batch, history=2))  # a window of M = 2 needs its history latent frames


@pytest.mark.parametrize("history", [0, 2])
def test_flop_formula_equals_counted_matmuls(monkeypatch, history):
    """As tests/model/test_wan_flops.py: the fused Wan attention core swapped for the textbook
    one, whose matmuls torch's counter sees; history latent frames are video tokens."""
    import wallwm_pretrain.model.wan.attention as attention
    from _wan_wallwm_tiny import LATENT_HW  # noqa: E402
    from test_wan_flops import textbook_attend  # noqa: E402

    from wallwm_pretrain.model.flops import flop_counter
    from wallwm_pretrain.model.wan_wallwm import forward_flops

    model = make().eval()
    batch = wan_batch(0, history=history)
    inp = model.flow_inputs(batch, model.sample_noise(batch, torch.Generator().manual_seed(1)))
    monkeypatch.setattr(attention, "attend", textbook_attend)
    # the action tower's fused core runs the CPU flash kernel: flop_counter() counts it
    with flop_counter() as counter, torch.no_grad():
        model.denoise(inp)
    flops = forward_flops(CFG, (history + 3, *LATENT_HW), 12, CFG.text_len)  # the padded text context
    assert counter.get_total_flops() == batch.size * flops["total"]
    assert model.train_flops(batch) == 3 * flops["total"]


def test_wan_heads_must_split_over_tensor_parallel_ranks():
    from wallwm_pretrain.config import load_config

    with pytest.raises(ConfigError, match=r"model.wan.num_attention_heads=24 is not divisible by parallel.tp=16"):
        load_config("configs/wallwm_wan22_5b.yaml", ["parallel.tp=16", "model.num_heads=16", "model.ffn_hidden_size=4096"])


def test_padding_does_not_leak():
    """What sits in padded latent frames, padded control steps and padded text positions
    changes no real output and no loss."""
    model = perturbed(make()).eval()
    batch = wan_batch(0)
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    inp = model.flow_inputs(batch, noise)
    g = torch.Generator().manual_seed(9)
    pad_frames = ~inp.frame_valid  # [B, N]
    assert pad_frames.any() and (~inp.action_valid).any() and (~batch.text_valid).any()
    latents = batch.latents + 5 * torch.randn(batch.latents.shape, generator=g) * pad_frames[:, None, None, :, None, None]
    actions = batch.actions + 5 * torch.randn(batch.actions.shape, generator=g) * (~inp.action_valid)[..., None]
    text = batch.text_states + 5 * torch.randn(batch.text_states.shape, generator=g) * (~batch.text_valid)[..., None]
    noisy = replace(noise, noise_video=noise.noise_video + 5 * pad_frames[:, None, None, :, None, None],
                    noise_action=noise.noise_action + 5 * (~inp.action_valid)[..., None])
    other = replace(batch, latents=latents, actions=actions, text_states=text)
    v1, a1 = model.denoise(inp)
    v2, a2 = model.denoise(model.flow_inputs(other, noisy))
    real_v = inp.frame_valid[:, None, None, :, None, None].expand_as(v1)
    real_a = inp.action_valid[..., None].expand_as(a1)
    torch.testing.assert_close(v1[real_v], v2[real_v], rtol=0, atol=1e-5)
    torch.testing.assert_close(a1[real_a], a2[real_a], rtol=0, atol=1e-5)
    out1, out2 = model(batch, noise=noise), model(other, noise=noisy)
    for key in out1:
        torch.testing.assert_close(out1[key], out2[key], rtol=1e-5, atol=1e-6)
