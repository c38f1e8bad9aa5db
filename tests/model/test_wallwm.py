"""The dual-tower denoiser: shapes, masking of padding, one-way coupling, it can learn."""

import pytest
import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.embeddings import patchify, unpatchify

K = 4
CFG = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                  frame_stride=K, caption_max_bytes=15)  # captions of at most 16 tokens


def make_model(seed=0):
    torch.manual_seed(seed)
    return WallWM(CFG)


def batch(b=3, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    actions = torch.randn(b, t, CFG.action_dim, generator=g)
    state = torch.randn(b, CFG.state_dim, generator=g)
    lengths = torch.tensor([t, t - 5, 6][:b])
    caption = torch.randint(2, 258, (b, 10), generator=g)
    caption[:, 0] = 1
    caption[1, 4:] = 0
    remaining = lengths.float() + torch.tensor([0.0, 9.0, 30.0][:b])  # steps to each event's end
    return frames, actions, state, lengths, caption, remaining


def test_patchify_round_trip():
    frames = torch.randint(0, 256, (2, 3, 2, 16, 16, 3), dtype=torch.uint8)
    tokens = patchify(frames, 8)
    assert tokens.shape == (2, 3, 2 * 4, 8 * 8 * 3)
    back = unpatchify(tokens, views=2, size=16, patch=8)
    assert torch.allclose((back + 1) * 127.5, frames.float(), atol=1e-4)


def test_parameter_counts_add_up():
    counts = make_model().parameter_counts()
    assert counts["video_tower"] > 0 and counts["action_tower"] > 0
    assert counts["video_tower"] + counts["action_tower"] + counts["conditioning"] == counts["total"]


def _denoise_inputs(model, frames, actions, state, lengths, caption, seed=1):
    g = torch.Generator().manual_seed(seed)
    xv = patchify(frames[:, ::K], CFG.patch_size)
    xv = xv + torch.randn(xv.shape, generator=g)
    xa = actions + torch.randn(actions.shape, generator=g)
    t = torch.full((frames.shape[0],), 0.5)
    fv = (torch.arange(frames.shape[1] // K) * K)[None] < lengths[:, None]
    av = torch.arange(frames.shape[1])[None] < lengths[:, None]
    return xv, xa, t, t, state, caption, fv, av


def test_padding_does_not_leak():
    """Changing what sits in padded steps (and caption padding) changes no real output."""
    model = make_model().eval()
    xv, xa, tv, ta, st, cap, fv, av = _denoise_inputs(model, *batch()[:5])
    pv, pa = model.denoise(xv, xa, tv, ta, st, cap, fv, av)
    xa2, xv2 = xa.clone(), xv.clone()
    xa2[~av] = 100.0
    xv2[~fv] = -50.0
    pv2, pa2 = model.denoise(xv2, xa2, tv, ta, st, cap, fv, av)
    torch.testing.assert_close(pa[av], pa2[av], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pv[fv], pv2[fv], rtol=1e-5, atol=1e-5)
    # and the check itself can fail: real positions do move when real inputs move
    xa3 = xa.clone()
    xa3[av] += 1.0
    _, pa3 = model.denoise(xv, xa3, tv, ta, st, cap, fv, av)
    assert (pa3[av] - pa[av]).abs().max() > 1e-3


def test_coupling_is_one_way():
    """Video predictions ignore actions; action predictions read the video tower."""
    model = make_model()
    for p in model.parameters():  # leave adaLN-Zero so every path is live
        p.data.add_(0.02 * torch.randn_like(p))
    xv, xa, tv, ta, st, cap, fv, av = _denoise_inputs(model, *batch()[:5])
    pv, pa = model.denoise(xv, xa, tv, ta, st, cap, fv, av)
    pv2, _ = model.denoise(xv, xa + 3.0, tv, ta, st, cap, fv, av)
    torch.testing.assert_close(pv, pv2)
    _, pa3 = model.denoise(xv + 1.0, xa, tv, ta, st, cap, fv, av)
    assert (pa3 - pa).abs().max() > 1e-4


def test_losses_are_finite_and_decrease_when_overfitting():
    model = make_model()
    data = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        g = torch.Generator().manual_seed(step % 4)  # a few fixed noise draws
        out = model(Batch(*data), generator=g)
        assert set(out) == {"loss", "loss_video", "loss_action", "loss_time"}
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
        losses.append(out["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])


@pytest.mark.parametrize("bad", ["video", "action"])
def test_loss_ignores_padding_targets(bad):
    model = make_model()
    frames, actions, state, lengths, caption, remaining = batch()
    ref = model(Batch(frames, actions, state, lengths, caption, remaining), generator=torch.Generator().manual_seed(3))
    frames2, actions2 = frames.clone(), actions.clone()
    if bad == "action":
        actions2[1, lengths[1]:] = 1e3
    else:
        frames2[2, lengths[2] + K:] = 255 - frames2[2, lengths[2] + K:]
    out = model(Batch(frames2, actions2, state, lengths, caption, remaining), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out["loss"], ref["loss"])


def test_remaining_time_head_reads_nothing_that_depends_on_the_event_length():
    """The time head sees the first frame, state and caption only: lengths, later frames and
    actions change nothing, so training cannot leak the answer through padding masks."""
    model = make_model()
    for p in model.parameters():
        p.data.add_(0.02 * torch.randn_like(p))
    frames, actions, state, lengths, caption, remaining = batch()
    ref = model(Batch(frames, actions, state, lengths, caption, remaining), generator=torch.Generator().manual_seed(3))
    frames2, actions2 = frames.clone(), torch.randn_like(actions)
    frames2[:, 1:] = 255 - frames2[:, 1:]
    out = model(Batch(frames2, actions2, state, torch.tensor([4, 8, 12]), caption, remaining),
                generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out["loss_time"], ref["loss_time"], rtol=0, atol=1e-6)
    assert abs(out["loss_action"] - ref["loss_action"]) > 1e-3  # the rest did see the change
    # the inference entry point is the same head: its steps reproduce the training loss
    steps = model.remaining_steps(frames[:, 0], state, caption)
    expected = torch.nn.functional.huber_loss(steps / K, remaining / K, delta=1.0)
    torch.testing.assert_close(ref["loss_time"], expected, rtol=1e-5, atol=1e-6)
    frames3 = frames.clone()
    frames3[:, 0] = 255 - frames3[:, 0]
    assert (model.remaining_steps(frames3[:, 0], state, caption) - steps).abs().max() > 1e-4


def test_remaining_time_head_learns_the_steps_to_the_event_end():
    model = make_model()
    data = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        out = model(Batch(*data), generator=torch.Generator().manual_seed(step % 4))
        out["loss"].backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        steps = model.remaining_steps(data[0][:, 0], data[2], data[4])
    # targets 12, 16 and 36 steps; one latent frame is 4 steps
    assert (steps - data[5]).abs().max() < K, (steps, data[5])


def test_time_loss_weight_zero_leaves_the_head_out():
    from dataclasses import replace

    torch.manual_seed(0)
    model = WallWM(replace(CFG, time_loss_weight=0.0))
    out = model(Batch(*batch()), generator=torch.Generator().manual_seed(3))
    assert float(out["loss_time"]) == 0.0
    torch.testing.assert_close(out["loss"], out["loss_video"] + out["loss_action"])
