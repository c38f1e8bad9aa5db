"""Flow matching as Wan trains it: the shifted video schedule (hand-worked values), the action
tower's unchanged uniform schedule, and Wan's timestep conventions."""

from __future__ import annotations

import pytest
import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ConfigError, ModelConfig
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.flow_matching import sample_time, shift_time
from wallwm_pretrain.model.wan.flow import per_token_timesteps, wan_timestep


def test_shift_hand_worked_values():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    # 5 t / (1 + 4 t): 0, 1.25 / 2 = 0.625, 2.5 / 3, 1
    assert torch.allclose(shift_time(t, 5.0), torch.tensor([0.0, 0.625, 2.5 / 3, 1.0]))
    # 0.5 t / (1 - 0.5 t): 0.125 / 0.875 = 1/7 at t = 0.25
    assert shift_time(t, 0.5)[1].item() == pytest.approx(1 / 7)
    assert shift_time(t, 1.0) is t
    for bad in (0.0, -0.5):  # a negative shift maps [0, 1] outside itself
        with pytest.raises(ValueError, match=f"shift must be > 0, got {bad}"):
            shift_time(t, bad)


def test_shifted_draws_are_the_uniform_draws_mapped():
    uniform = sample_time(6, torch.device("cpu"), torch.Generator().manual_seed(4))
    shifted = sample_time(6, torch.device("cpu"), torch.Generator().manual_seed(4), shift=3.0)
    assert torch.allclose(shifted, 3 * uniform / (1 + 2 * uniform))
    assert (shifted >= uniform).all()  # towards the noise end


def _batch(t=8):
    g = torch.Generator().manual_seed(0)
    return Batch(
        frames=torch.randint(0, 256, (2, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g),
        actions=torch.randn(2, t, 4, generator=g),
        state=torch.randn(2, 8, generator=g),
        lengths=torch.tensor([t, 5]),
        caption=torch.randint(2, 258, (2, 6), generator=g),
    )


def test_video_tower_takes_the_shift_the_action_tower_does_not():
    base = dict(hidden_size=32, num_layers=1, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                frame_stride=4, caption_max_bytes=15)
    torch.manual_seed(0)
    plain = WallWM(ModelConfig(**base)).sample_noise(_batch(), torch.Generator().manual_seed(5))
    torch.manual_seed(0)
    shifted = WallWM(ModelConfig(**base, video_time_shift=5.0)).sample_noise(_batch(), torch.Generator().manual_seed(5))
    assert torch.allclose(shifted.t_video, 5 * plain.t_video / (1 + 4 * plain.t_video))
    assert not torch.allclose(shifted.t_video, plain.t_video)
    for a, b in ((shifted.t_action, plain.t_action), (shifted.noise_video, plain.noise_video),
                 (shifted.noise_action, plain.noise_action)):
        assert torch.equal(a, b)
    with pytest.raises(ConfigError, match="video_time_shift must be > 0"):
        ModelConfig(**base, video_time_shift=0.0)


def test_wan_timesteps():
    t = torch.tensor([0.5, 0.25])
    assert torch.equal(wan_timestep(t), torch.tensor([500.0, 250.0]))
    per_token = per_token_timesteps(t, (3, 2, 1), clean_frames=1)
    assert torch.equal(per_token, torch.tensor([[0.0, 0.0, 500.0, 500.0, 500.0, 500.0],
                                                [0.0, 0.0, 250.0, 250.0, 250.0, 250.0]]))
    with pytest.raises(ValueError, match="clean_frames=4"):
        per_token_timesteps(t, (3, 2, 1), clean_frames=4)


def test_sampler_steps_the_video_through_the_shifted_times_and_lands_on_x0():
    """The exact velocity field (x - x0) / t in place of the network: Euler along a straight
    line is exact on any grid, so both towers land on their x0; the video tower is asked at
    the shifted times, the action tower at the uniform ones."""
    from wallwm_pretrain.eval.sampler import sample_event
    from wallwm_pretrain.model.embeddings import patchify

    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                      frame_stride=4, caption_max_bytes=15, video_time_shift=3.0)
    torch.manual_seed(0)
    model = WallWM(cfg).eval()
    g = torch.Generator().manual_seed(4)
    frame = torch.randint(0, 256, (2, cfg.num_views, 16, 16, 3), dtype=torch.uint8, generator=g)
    x0_video = torch.randn(2, 3, *patchify(frame[:, None], 8).shape[2:], generator=g)
    x0_video[:, :1] = patchify(frame[:, None], 8)
    x0_action = torch.randn(2, 12, cfg.action_dim, generator=g)
    calls = []

    def denoise(xt_video, xt_action, t_video, t_action, *rest):
        calls.append((float(t_video[0]), float(t_action[0])))
        return (xt_video - x0_video) / t_video[:, None, None, None], (xt_action - x0_action) / t_action[:, None, None]

    model.denoise = denoise
    actions, video = sample_event(model, frame, torch.zeros(2, cfg.state_dim), torch.ones(2, 4, dtype=torch.long),
                                  steps=12, denoise_steps=4, generator=torch.Generator().manual_seed(5))
    uniform = [1.0, 0.75, 0.5, 0.25]
    assert [a for _, a in calls] == pytest.approx(uniform)
    assert [v for v, _ in calls] == pytest.approx([3 * t / (1 + 2 * t) for t in uniform])
    torch.testing.assert_close(actions, x0_action, rtol=0, atol=1e-5)
    torch.testing.assert_close(video, x0_video, rtol=0, atol=1e-5)
