"""Unified-mode windows in both dual-tower models: M history latent frames before the anchor.

For ``batch.history = M > 0``: the history and the anchor (latent frames 0..M) stay clean and
carry no video loss, the towers read them, action k carries latent frame index M + k // K (it
lines up with the anchor), the remaining-time head reads the anchor, the loss counts leave the
history and the anchor out, and pipeline slices pass the longer video streams. M = 0 is event
and chunk mode (the other model tests).
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _wan_wallwm_tiny import CFG as WAN_CFG  # noqa: E402
from _wan_wallwm_tiny import wan_batch  # noqa: E402

from wallwm_pretrain.batch import Batch  # noqa: E402
from wallwm_pretrain.config import ModelConfig  # noqa: E402
from wallwm_pretrain.model import WallWM, WanWallWM  # noqa: E402
from wallwm_pretrain.model.embeddings import patchify  # noqa: E402
from wallwm_pretrain.model.flops import SampleShape, forward_flops, train_flops  # noqa: E402
from wallwm_pretrain.model.pipeline_slice import PipelineSlice  # noqa: E402

K = 4
M = 2
T = 12
CFG = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                  frame_stride=K, caption_max_bytes=15)
LENGTHS = [12, 7, 6]  # future latent frames (steps 0, 4, 8) real: 3, 2, 2; with a loss (not the anchor): 2, 1, 1


def perturbed(model, seed=3):
    """Every parameter moved (adaLN-Zero and zero-initialised gates otherwise hide paths)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def small(part=None):
    torch.manual_seed(0)
    return WallWM(CFG, part)


def window(history=M, seed=0) -> Batch:
    """A pixel-path window: ``history * K`` history control steps, then the T steps of the actions."""
    g = torch.Generator().manual_seed(seed)
    b = len(LENGTHS)
    frames = torch.randint(0, 256, (b, history * K + T, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    lengths = torch.tensor(LENGTHS)
    actions = torch.randn(b, T, CFG.action_dim, generator=g) * (torch.arange(T)[None, :, None] < lengths[:, None, None])
    caption = torch.randint(2, 258, (b, 10), generator=g)
    caption[:, 0] = 1
    caption[1, 4:] = 0
    remaining = lengths.float() + torch.tensor([0.0, 9.0, 30.0])
    return Batch(frames, actions, torch.randn(b, CFG.state_dim, generator=g), lengths, caption, remaining, history=history)


def denoise_inputs(model, batch, noise):
    inp = model.flow_inputs(batch, noise)
    return inp, (inp.xt_video, inp.xt_action, inp.t_video, inp.t_action, inp.state, inp.caption, inp.frame_valid,
                 inp.action_valid)


# -- the small (pixel) path ----------------------------------------------------------------


def test_small_history_and_anchor_are_clean_real_and_carry_no_loss():
    model = small()
    batch = window()
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    inp = model.flow_inputs(batch, noise)
    x0 = patchify(batch.frames[:, ::K], CFG.patch_size)
    assert x0.shape[1] == M + T // K and noise.noise_video.shape == x0.shape and inp.history == M
    assert torch.equal(inp.xt_video[:, : M + 1], x0[:, : M + 1])
    tv = noise.t_video[:, None, None, None]
    torch.testing.assert_close(inp.xt_video[:, M + 1 :], ((1 - tv) * x0 + tv * noise.noise_video)[:, M + 1 :],
                               rtol=0, atol=1e-6)
    # history always real (even in the short rows), then the T steps' frames by length
    assert inp.frame_valid.tolist() == [[True] * M + [True, True, True], [True] * M + [True, True, False],
                                        [True] * M + [True, True, False]]
    assert inp.video_loss_mask.tolist() == [[False] * (M + 1) + [True, True], [False] * (M + 1) + [True, False],
                                            [False] * (M + 1) + [True, False]]
    # another target on the history and the anchor (their noise) leaves every loss as it was
    ref = model(batch, noise=noise)
    other = noise.noise_video.clone()
    other[:, : M + 1] = 7.0
    out = model(batch, noise=replace(noise, noise_video=other))
    for key in ref:
        assert torch.equal(out[key], ref[key]), key
    # ...while the first predicted frame's noise does move the video loss (the check can fail)
    other[:, M + 1] += 1.0
    assert abs(float(model(batch, noise=replace(noise, noise_video=other))["loss_video"] - ref["loss_video"])) > 1e-4


def test_small_model_reads_the_history():
    """A changed history frame changes the predictions of the future frames and of the actions."""
    model = perturbed(small()).eval()
    batch = window()
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    inp, args = denoise_inputs(model, batch, noise)
    pv, pa = model.denoise(*args, history=M)
    frames = batch.frames.clone()
    frames[:, 0] = 255 - frames[:, 0]  # latent frame 0: the oldest history frame
    _, args2 = denoise_inputs(model, replace(batch, frames=frames), noise)
    pv2, pa2 = model.denoise(*args2, history=M)
    assert (pv2[:, M + 1 :] - pv[:, M + 1 :]).abs().max() > 1e-4
    assert (pa2 - pa).abs().max() > 1e-4
    # and denoise is the training forward's network: the loss reproduces from its predictions
    out = model(batch, noise=noise)
    mask = inp.video_loss_mask[:, :, None, None].float()
    se = ((pv - inp.target_video) ** 2 * mask).sum()
    torch.testing.assert_close(out["loss_video"], se / (mask.sum() * pv.shape[2] * pv.shape[3]), rtol=1e-5, atol=0)


def test_small_actions_carry_the_frame_index_of_the_anchor_and_after():
    """Action k's frame term (its embedding less the action and in-group terms) is the frame
    term of video latent frame M + k // K (its embedding less the patch terms)."""
    model = small()
    batch = window()
    _, args = denoise_inputs(model, batch, model.sample_noise(batch, torch.Generator().manual_seed(1)))
    xt_v, xt_a = args[0], args[1]
    b, f, p, _ = xt_v.shape
    h = CFG.hidden_size
    with torch.no_grad():
        s = model.embed(*args, history=M)
        steps = torch.arange(T)
        action_term = s.action.transpose(0, 1) - model.action_in(xt_a) - model.action_group_pos(steps % K)[None]
        video = s.video.transpose(0, 1).reshape(b, f, p, h)
        video_term = video - model.video_in(xt_v) - model.video_patch_pos.weight[None, None]
    torch.testing.assert_close(action_term, video_term[:, M + steps // K, 0], rtol=0, atol=1e-5)
    # the anchor is not frame 0: without the offset the first group would not line up
    assert (video_term[:, 0, 0] - video_term[:, M, 0]).abs().max() > 1e-2


def test_small_time_head_reads_the_anchor():
    model = perturbed(small())
    batch = window()
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    ref = model(batch, noise=noise)
    history = batch.frames.clone()
    history[:, : M * K] = 255 - history[:, : M * K]
    out = model(replace(batch, frames=history), noise=noise)
    torch.testing.assert_close(out["loss_time"], ref["loss_time"], rtol=0, atol=0)
    assert abs(float(out["loss_action"] - ref["loss_action"])) > 1e-5  # the rest did see the history
    anchor = batch.frames.clone()
    anchor[:, M * K] = 255 - anchor[:, M * K]
    assert abs(float(model(replace(batch, frames=anchor), noise=noise)["loss_time"] - ref["loss_time"])) > 1e-5
    # inference reads the current observation, the anchor: its steps reproduce the training loss
    with torch.no_grad():
        steps = model.remaining_steps(batch.frames[:, M * K], batch.state, batch.caption)
    expected = torch.nn.functional.huber_loss(steps / K, batch.remaining / K, delta=1.0)
    torch.testing.assert_close(ref["loss_time"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_small_loss_counts_leave_out_history_and_anchor():
    model = small()
    per_frame = model.patches * model.patch_dim
    real_steps = sum(LENGTHS)
    expected = torch.tensor([(2 + 1 + 1) * per_frame, real_steps * CFG.action_dim, 3], dtype=torch.float32)
    assert torch.equal(model.loss_counts(window()), expected)
    assert torch.equal(model.loss_counts(window(history=0)), expected)  # history adds nothing to count
    assert torch.equal(model.loss_element_counts(torch.tensor(LENGTHS), T, M), expected)


def test_small_flops_and_boundary_count_history_frames_as_video_tokens():
    model = small()
    batch = window()
    shape = SampleShape.of(CFG, T, K, 10, history=M)
    assert shape.video_tokens == (M + T // K) * model.patches
    assert model.train_flops(batch) == train_flops(CFG, shape)
    assert model.boundary_seq_length(batch) == (M + T // K) * model.patches + T + 10 + 3
    from wallwm_pretrain.model.flops import flop_counter

    with flop_counter() as counter, torch.no_grad():  # no time head: the formula counts the towers
        model(replace(batch, remaining=None), generator=torch.Generator().manual_seed(0))
    assert counter.get_total_flops() == batch.size * forward_flops(CFG, shape)["total"]


def test_small_pipeline_slices_with_history_equal_the_whole_model():
    whole = perturbed(small())
    state = whole.state_dict()
    first, last = small(PipelineSlice(0, 1, embed=True, head=False)), small(PipelineSlice(1, 1, embed=False, head=True))
    for m in (first, last):
        m.load_state_dict({k: state[k] for k in m.state_dict()})
    batch = window()
    noise = whole.sample_noise(batch, torch.Generator().manual_seed(2))
    packed = first(batch, noise=noise)
    assert packed.shape == (whole.boundary_seq_length(batch), batch.size, CFG.hidden_size)
    out, ref = last(batch, noise=noise, hidden=packed), whole(batch, noise=noise)
    for key in ref:
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-6)


def test_small_window_with_the_wrong_frame_count_fails_clearly():
    model = small()
    batch = window()
    with pytest.raises(ValueError, match=r"batch.history = 3 .* need 24"):
        model(replace(batch, history=3), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="history=5 must leave the anchor among the 5 latent frames"):
        model.denoise(*denoise_inputs(model, batch, model.sample_noise(batch))[1], history=M + T // K)


# -- the Wan path ----------------------------------------------------------------------------


def wan():
    torch.manual_seed(0)
    return perturbed(WanWallWM(WAN_CFG))


def test_wan_history_and_anchor_are_clean_with_timestep_zero_and_carry_no_loss():
    model = wan()
    batch = wan_batch(0, history=M)
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    inp = model.flow_inputs(batch, noise)
    assert inp.history == M and inp.xt_video.shape[3] == M + 3
    assert torch.equal(inp.xt_video[:, :, :, : M + 1], batch.latents[:, :, :, : M + 1])
    per_frame = 2 * 3  # the tiny latent grid: 2 x 3 patches per latent frame
    assert torch.all(inp.timestep[:, : (M + 1) * per_frame] == 0)
    assert torch.all(inp.timestep[:, (M + 1) * per_frame :] == 1000 * noise.t_video[:, None])
    assert inp.frame_valid.tolist()[3] == [True] * M + [True, False, False]  # length 3: only the anchor is real
    assert not inp.video_loss_mask[:, : M + 1].any()
    anchor = batch.latents[:, :, :, M].permute(0, 1, 3, 4, 2).reshape(batch.size, -1, WAN_CFG.wan.in_channels)
    assert torch.equal(inp.anchor_frame, anchor)
    ref = model(batch, noise=noise)
    other = noise.noise_video.clone()
    other[:, :, :, : M + 1] = 7.0  # another target on the history and the anchor
    out = model(batch, noise=replace(noise, noise_video=other))
    for key in ref:
        assert torch.equal(out[key], ref[key]), key
    other[:, :, :, M + 1] += 1.0
    assert abs(float(model(batch, noise=replace(noise, noise_video=other))["loss_video"] - ref["loss_video"])) > 1e-4
    # the counts: real frames after the anchor (lengths 12, 5, 9, 3 -> 2, 1, 2, 0) x V Z h w
    lat = batch.latents.shape
    counts = model.loss_counts(batch)
    assert counts[0] == (2 + 1 + 2 + 0) * lat[1] * lat[2] * lat[4] * lat[5]
    assert torch.equal(counts, model.loss_counts(wan_batch(0)))


def test_wan_model_reads_the_history_and_the_time_head_the_anchor():
    model = wan().eval()
    batch = wan_batch(0, history=M)
    noise = model.sample_noise(batch, torch.Generator().manual_seed(1))
    pv, pa = model.denoise(model.flow_inputs(batch, noise))
    ref = model(batch, noise=noise)
    latents = batch.latents.clone()
    latents[:, :, :, 0] += 2.0  # the oldest history latent frame
    changed = replace(batch, latents=latents)
    pv2, pa2 = model.denoise(model.flow_inputs(changed, noise))
    assert (pv2[:, :, :, M + 1 :] - pv[:, :, :, M + 1 :]).abs().max() > 1e-4
    assert (pa2 - pa).abs().max() > 1e-4
    assert torch.equal(model(changed, noise=noise)["loss_time"], ref["loss_time"])
    latents = batch.latents.clone()
    latents[:, :, :, M] += 2.0  # the anchor
    assert abs(float(model(replace(batch, latents=latents), noise=noise)["loss_time"] - ref["loss_time"])) > 1e-5
