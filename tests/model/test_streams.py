"""The packed stage-boundary tensor of :class:`Streams`: layout, round trip and the length check.

Every expected value is written out here from the wire layout the pipeline ranks agree on
(``[video; action; caption; state token; t_video; t_action]`` along the sequence), not read back
from ``pack``.
"""

import re

import pytest
import torch

from wallwm_pretrain.model.blocks import Streams, key_padding_mask

SV, SA, L, B, H = 5, 4, 6, 3, 8  # all different, so a swapped or shifted cut cannot line up


def streams() -> Streams:
    g = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    valid = lambda n, lengths: torch.arange(n)[None, :] < torch.tensor(lengths)[:, None]  # noqa: E731
    return Streams(
        video=rand(SV, B, H), action=rand(SA, B, H), text=rand(L, B, H), state=rand(1, B, H),
        temb_video=rand(B, H), temb_action=rand(B, H),
        video_mask=key_padding_mask(valid(SV, [5, 3, 1])),
        action_mask=key_padding_mask(valid(SA, [4, 2, 1])),
        text_mask=key_padding_mask(valid(L, [6, 4, 1])),
    )


def test_key_padding_mask_is_megatrons_layout():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    expected = torch.tensor([[False, False, True], [False, True, True]])[:, None, None, :]
    mask = key_padding_mask(valid)
    assert mask.shape == (2, 1, 1, 3) and mask.dtype == torch.bool
    assert torch.equal(mask, expected)


def test_pack_lays_the_streams_out_in_the_wire_order():
    s = streams()
    packed = s.pack()
    assert packed.shape == (SV + SA + L + 3, B, H)
    # written out position by position: no slicing helper shared with unpack
    assert torch.equal(packed[0:5], s.video)
    assert torch.equal(packed[5:9], s.action)
    assert torch.equal(packed[9:15], s.text)
    assert torch.equal(packed[15], s.state[0])
    assert torch.equal(packed[16], s.temb_video)
    assert torch.equal(packed[17], s.temb_action)


def test_unpack_is_the_inverse_of_pack():
    s = streams()
    back = Streams.unpack(s.pack(), SV, SA, s.video_mask, s.action_mask, s.text_mask)
    for name in ("video", "action", "text", "state", "temb_video", "temb_action"):
        a, b = getattr(back, name), getattr(s, name)
        assert a.shape == b.shape, name
        assert torch.equal(a, b), name
    # the masks are the batch's, handed through untouched (they never travel)
    assert back.video_mask is s.video_mask and back.action_mask is s.action_mask and back.text_mask is s.text_mask


def test_unpack_cuts_a_hand_built_wire_tensor():
    """Positions numbered 0..17: each stream must get exactly its own numbers."""
    s = streams()
    wire = torch.arange(SV + SA + L + 3, dtype=torch.float)[:, None, None].expand(-1, B, H)
    back = Streams.unpack(wire, SV, SA, s.video_mask, s.action_mask, s.text_mask)
    first = lambda t: t[..., 0, 0].tolist()  # noqa: E731
    assert first(back.video) == [0, 1, 2, 3, 4]
    assert first(back.action) == [5, 6, 7, 8]
    assert first(back.text) == [9, 10, 11, 12, 13, 14]
    assert first(back.state) == [15]
    assert back.temb_video.shape == (B, H) and back.temb_video[0, 0].item() == 16
    assert back.temb_action.shape == (B, H) and back.temb_action[0, 0].item() == 17


@pytest.mark.parametrize("extra", [-1, 1])
def test_unpack_refuses_a_wire_tensor_of_the_wrong_length_naming_the_sizes(extra):
    s = streams()
    packed = torch.zeros(SV + SA + L + 3 + extra, B, H)
    message = (
        f"a packed pipeline input of {18 + extra} positions does not match the batch: "
        "video 5 + action 4 + caption 6 + state 1 + timesteps 2 = 18"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Streams.unpack(packed, SV, SA, s.video_mask, s.action_mask, s.text_mask)


def test_unpack_reads_the_caption_length_from_the_caption_mask():
    """Other video/action splits of the same total are cut where the caller says."""
    s = streams()
    wire = torch.arange(18, dtype=torch.float)[:, None, None].expand(-1, B, H)
    back = Streams.unpack(wire, 3, 6, s.video_mask, s.action_mask, s.text_mask)
    assert back.video[:, 0, 0].tolist() == [0, 1, 2]
    assert back.action[:, 0, 0].tolist() == [3, 4, 5, 6, 7, 8]
    assert back.text[:, 0, 0].tolist() == [9, 10, 11, 12, 13, 14]


def test_with_towers_replaces_only_the_towers():
    s = streams()
    video, action = torch.ones(SV, B, H), torch.full((SA, B, H), 2.0)
    t = s.with_towers(video, action)
    assert t is not s and t.video is video and t.action is action
    assert s.video is not video  # the original is left as it was
    for name in ("text", "state", "temb_video", "temb_action", "video_mask", "action_mask", "text_mask"):
        assert getattr(t, name) is getattr(s, name), name


def test_unpack_takes_real_lengths_above_small_ints():
    """A run's video stream is hundreds of tokens: the length check compares values, not objects
    (CPython shares one object per int only up to 256)."""
    s = streams()
    video = torch.randn(300, B, H)
    packed = s.with_towers(video, s.action).pack()
    assert packed.shape[0] == 313
    back = Streams.unpack(packed, 300, SA, s.video_mask, s.action_mask, s.text_mask)
    assert torch.equal(back.video, video) and torch.equal(back.temb_action, s.temb_action)
