"""sample_event: shapes, the clean first frame, reproducible noise, the Euler step itself."""

import pytest
import torch

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.eval.sampler import sample_event
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.embeddings import patchify

K = 4
CFG = ModelConfig(hidden_size=32, num_layers=1, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                  frame_stride=K, caption_max_bytes=15)  # captions of at most 16 tokens


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = WallWM(CFG)
    for p in m.parameters():  # leave adaLN-Zero's zero init, so every path is live
        p.data.add_(0.02 * torch.randn_like(p))
    return m.eval()


def observation(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(0, 256, (b, CFG.num_views, 16, 16, 3), dtype=torch.uint8, generator=g)
    state = torch.randn(b, CFG.state_dim, generator=g)
    caption = torch.randint(2, 258, (b, 12), generator=g)
    caption[:, 0] = 1
    caption[1, 6:] = 0  # padding
    return frame, state, caption


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_shapes_and_clean_first_frame(model):
    frame, state, caption = observation()
    actions, video = sample_event(model, frame, state, caption, steps=12, denoise_steps=3, generator=gen(1))
    patches = CFG.num_views * (16 // 8) ** 2
    assert actions.shape == (2, 12, CFG.action_dim) and actions.dtype == torch.float32
    assert video.shape == (2, 12 // K, patches, 8 * 8 * 3)
    assert torch.isfinite(actions).all() and torch.isfinite(video).all()
    # the current observation is the condition: exactly its patches, never denoised
    assert torch.equal(video[:, 0], patchify(frame[:, None], CFG.patch_size)[:, 0])


def test_one_step_is_an_euler_step_from_noise(model):
    """x(0) = x(1) - v(x(1), t=1): the noise drawn video first, then actions, from the generator."""
    frame, state, caption = observation()
    steps = 8
    actions, video = sample_event(model, frame, state, caption, steps, denoise_steps=1, generator=gen(5))
    g = gen(5)
    first = patchify(frame[:, None], CFG.patch_size)
    xv = torch.randn((2, steps // K, *first.shape[2:]), generator=g)
    xv[:, :1] = first
    xa = torch.randn((2, steps, CFG.action_dim), generator=g)
    one = torch.ones(2)
    with torch.no_grad():
        vv, va = model.denoise(xv, xa, one, one, state, caption, torch.ones(2, steps // K, dtype=torch.bool),
                               torch.ones(2, steps, dtype=torch.bool))
    torch.testing.assert_close(actions, xa - va)
    torch.testing.assert_close(video[:, 1:], (xv - vv)[:, 1:])


def test_same_seed_same_actions_other_seed_differs(model):
    frame, state, caption = observation()
    a1, v1 = sample_event(model, frame, state, caption, 8, 4, gen(7))
    a2, v2 = sample_event(model, frame, state, caption, 8, 4, gen(7))
    a3, _ = sample_event(model, frame, state, caption, 8, 4, gen(8))
    assert torch.equal(a1, a2) and torch.equal(v1, v2)
    assert (a1 - a3).abs().max() > 1e-3
    # more Euler steps integrate the same flow differently
    a4, _ = sample_event(model, frame, state, caption, 8, 2, gen(7))
    assert (a1 - a4).abs().max() > 1e-6


def test_observation_conditions_the_actions(model):
    frame, state, caption = observation()
    other_frame, other_state, _ = observation(seed=1)
    base, _ = sample_event(model, frame, state, caption, 8, 2, gen(3))
    moved_frame, _ = sample_event(model, other_frame, state, caption, 8, 2, gen(3))
    moved_state, _ = sample_event(model, frame, other_state, caption, 8, 2, gen(3))
    assert (base - moved_frame).abs().max() > 1e-5
    assert (base - moved_state).abs().max() > 1e-5


@pytest.mark.parametrize("steps", [0, 2, 6, 13])
def test_rejects_steps_that_are_not_whole_latent_frames(model, steps):
    frame, state, caption = observation()
    with pytest.raises(ValueError, match=rf"steps \({steps}\) must be a positive multiple of the frame stride \({K}\)"):
        sample_event(model, frame, state, caption, steps, 2, gen(0))


def test_rejects_zero_denoise_steps(model):
    frame, state, caption = observation()
    with pytest.raises(ValueError, match="denoise_steps must be >= 1"):
        sample_event(model, frame, state, caption, 8, 0, gen(0))
