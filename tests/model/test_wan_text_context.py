"""Wan's text context on the Wan path (model/wan/text.py): what the Wan tower reads for a caption
equals what diffusers' ``WanPipeline.encode_prompt`` hands Wan's transformer (the tiny UMT5 and
tokenizer of ``convert make-tiny``, states made by ``data_tools embed-captions``' rule), with no
text mask; and the conditioner's aligned states the tower reads come only from positions the
alignment loss trains."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tests.model._wan_wallwm_tiny import CFG, WAN, wan_batch
from wallwm_pretrain.model.conditioner.heads import AlignmentHead, alignment_sse
from wallwm_pretrain.model.wan.text import pad_text_context
from wallwm_pretrain.model.wan_wallwm import WanWallWM

CAPTIONS = ["pick up the red block and place it in the bowl", "open the drawer", "push the puck to the target"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from wallwm_pretrain.convert.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_text") / "models", seed=0)


def _shard_states(tiny, captions):
    """The states embed-captions writes into the shards (float16, real positions only)."""
    from data_tools.textstates import EmbedCaptions

    enc = EmbedCaptions(str(tiny["text_encoder"]), str(tiny["tokenizer"]))
    return [torch.from_numpy(s) for s in enc.encode(captions)]


def _loader_batch(states):
    """Padded to the longest with the real positions marked, as the loader collates them."""
    longest = max(len(s) for s in states)
    text = torch.zeros(len(states), longest, states[0].shape[1], dtype=torch.float16)
    for i, s in enumerate(states):
        text[i, : len(s)] = s
    return text, torch.arange(longest)[None] < torch.tensor([len(s) for s in states])[:, None]


def test_the_padded_context_equals_diffusers_encode_prompt(tiny):
    from diffusers import WanPipeline
    from transformers import AutoTokenizer, UMT5EncoderModel

    text_len = 48
    tok = AutoTokenizer.from_pretrained(tiny["tokenizer"], local_files_only=True)
    enc = UMT5EncoderModel.from_pretrained(tiny["text_encoder"], local_files_only=True).eval()
    pipe = WanPipeline(tokenizer=tok, text_encoder=enc, vae=None, scheduler=None)
    with torch.no_grad():
        theirs, _ = pipe.encode_prompt(CAPTIONS, do_classifier_free_guidance=False, max_sequence_length=text_len,
                                       device=torch.device("cpu"))
    states, valid = _loader_batch(_shard_states(tiny, CAPTIONS))
    assert valid.sum(1).tolist() != [valid.shape[1]] * len(CAPTIONS)  # unequal lengths: padding exercised
    # what the Wan tower reads: the denoiser's flow inputs of a batch carrying these states
    cfg = replace(CFG, wan=replace(WAN, text_dim=states.shape[2]), text_len=text_len)
    torch.manual_seed(0)
    model = WanWallWM(cfg).eval()
    batch = replace(wan_batch(0, b=len(CAPTIONS)), text_states=states, text_valid=valid)
    inputs = model.flow_inputs(batch, model.sample_noise(batch, torch.Generator().manual_seed(1)))
    assert inputs.text_states.shape == theirs.shape == (len(CAPTIONS), text_len, states.shape[2])
    # float16 in the shards: equal to diffusers' float32 states up to that rounding
    torch.testing.assert_close(inputs.text_states, theirs.half().float(), rtol=0, atol=2e-3)
    real = (theirs.abs().sum(-1) > 0)
    assert torch.equal(real, inputs.text_valid) and (inputs.text_states[~real] == 0).all()
    assert model.layer_inputs(inputs).text_mask is None  # the Wan tower attends to every position


def test_padding_is_cut_or_refused_past_text_len():
    states = torch.randn(2, 6, 4)
    valid = torch.tensor([[True] * 3 + [False] * 3, [True] * 2 + [False] * 4])
    out, real = pad_text_context(states + 100 * (~valid)[..., None], valid, 4)
    assert out.shape == (2, 4, 4) and torch.equal(real, valid[:, :4])
    assert torch.equal(out[0, :3], states[0, :3]) and (out[0, 3:] == 0).all() and (out[1, 2:] == 0).all()
    with pytest.raises(ValueError, match=r"batch.text_states: row 0 has 3 real positions.*model.text_len=2"):
        pad_text_context(states, valid, 2, "batch.text_states")


def test_every_aligned_position_is_trained():
    """The alignment loss on captions shorter than the head sends gradient to every position the
    head writes (the tower reads them: tests/conditioner/test_context.py)."""
    torch.manual_seed(0)
    head = AlignmentHead(32, 2, 1, 5, 16)
    pred = head(torch.randn(2, 7, 32), torch.zeros(2, 7, dtype=torch.bool))
    pred.retain_grad()
    valid = torch.tensor([[True, True, True], [True, False, False]])
    alignment_sse(pred, torch.randn(2, 3, 16), valid).backward()
    assert (pred.grad.abs().sum(-1) > 0).all()
