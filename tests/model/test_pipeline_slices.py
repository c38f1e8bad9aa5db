"""Pipeline slices of the model in one process: split weights, packed streams, same losses."""

import pytest
import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.blocks import Streams
from wallwm_pretrain.model.pipeline_slice import PipelineSlice

K = 4
CFG = ModelConfig(hidden_size=32, num_layers=3, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                  frame_stride=K, caption_max_bytes=15)  # captions of at most 16 tokens


def build(part=None, seed=0):
    torch.manual_seed(seed)
    return WallWM(CFG, pipeline_slice=part)


def batch(t=12):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (2, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    actions = torch.randn(2, t, CFG.action_dim, generator=g)
    state = torch.randn(2, CFG.state_dim, generator=g)
    lengths = torch.tensor([t, 5])
    caption = torch.randint(2, 258, (2, 9), generator=g)
    caption[:, 0] = 1
    caption[1, 4:] = 0
    return frames, actions, state, lengths, caption, torch.tensor([30.0, 5.0])


STAGES = [PipelineSlice(0, 1, embed=True, head=False), PipelineSlice(1, 1, False, False), PipelineSlice(2, 1, False, True)]


def test_stages_hold_the_whole_models_weights():
    whole = dict(build().named_parameters())
    parts = [dict(build(s).named_parameters()) for s in STAGES]
    names = [set(p) for p in parts]
    assert set().union(*names) == set(whole) and sum(map(len, names)) == len(whole)
    for part in parts:
        for name, p in part.items():
            assert torch.equal(p, whole[name]), name
    assert "video_in.weight" in names[0] and "action_out.head.weight" in names[2]
    assert {n.split(".")[1] for n in names[1]} == {"1"}  # only coupled layer 1, video and action block


def test_chained_stages_give_the_whole_models_losses():
    whole, stages = build(), [build(s) for s in STAGES]
    with torch.no_grad():  # leave adaLN-Zero so that every layer matters
        for p in whole.parameters():
            p.add_(0.02 * torch.randn_like(p))
    state = whole.state_dict()
    for m in stages:  # a stage's state dict is the whole model's, restricted to its names
        m.load_state_dict({k: state[k] for k in m.state_dict()})
    data = batch()
    noise = whole.sample_noise(Batch(*data), torch.Generator().manual_seed(2))
    ref = whole(Batch(*data), noise=noise)
    hidden = None
    for m in stages[:-1]:
        hidden = m(Batch(*data), noise=noise, hidden=hidden)
        # video (3 frames * 8 patches) + actions (12) + caption (9) + state + 2 timesteps
        assert hidden.shape == (3 * 8 + 12 + 9 + 3, 2, CFG.hidden_size)
    out = stages[-1](Batch(*data), noise=noise, hidden=hidden)
    for key in ("loss", "loss_video", "loss_action", "loss_time"):
        torch.testing.assert_close(out[key], ref[key], rtol=0, atol=1e-6)


def test_pack_unpack_round_trip_and_shape_check():
    s = Streams(
        video=torch.randn(6, 2, 4), action=torch.randn(5, 2, 4), text=torch.randn(3, 2, 4), state=torch.randn(1, 2, 4),
        temb_video=torch.randn(2, 4), temb_action=torch.randn(2, 4),
        video_mask=torch.zeros(2, 1, 1, 6, dtype=torch.bool), action_mask=torch.zeros(2, 1, 1, 5, dtype=torch.bool),
        text_mask=torch.zeros(2, 1, 1, 3, dtype=torch.bool),
    )
    back = Streams.unpack(s.pack(), 6, 5, s.video_mask, s.action_mask, s.text_mask)
    for field in ("video", "action", "text", "state", "temb_video", "temb_action"):
        assert torch.equal(getattr(back, field), getattr(s, field)), field
    with pytest.raises(ValueError, match=r"video 6 \+ action 4 \+ caption 3 \+ state 1 \+ timesteps 2 = 16"):
        Streams.unpack(s.pack(), 6, 4, s.video_mask, s.action_mask, s.text_mask)


def test_stage_outside_the_model_is_refused():
    with pytest.raises(ValueError, match="not inside the model's 3 coupled layers"):
        build(PipelineSlice(2, 2, False, True))
