"""The analytical FLOP formula against torch's own count of the matmuls the model runs."""

from dataclasses import replace

import pytest
import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.flops import (
    SampleShape, attention_core_flops, flop_counter, forward_flops, recompute_flops, train_flops,
)

K = 4
CFG = ModelConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, image_size=16, patch_size=8,
                  frame_stride=K, caption_max_bytes=15)  # captions of at most 16 tokens

def counter():
    return flop_counter()


def inputs(b, t, caption_len):
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (b, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g)
    caption = torch.randint(2, 258, (b, caption_len), generator=g)
    return frames, torch.randn(b, t, 4, generator=g), torch.randn(b, 8, generator=g), torch.full((b,), t), caption


@pytest.mark.parametrize(
    "cfg, b, t, caption_len",
    [(CFG, 3, 12, 10), (replace(CFG, text_layers=2, num_layers=3, ffn_hidden_size=96), 2, 20, 7)],
)
def test_forward_formula_equals_counted_matmuls(cfg, b, t, caption_len):
    model = WallWM(cfg)
    with counter() as count:
        model(Batch(*inputs(b, t, caption_len)), generator=torch.Generator().manual_seed(0))
    shape = SampleShape.of(cfg, t, K, caption_len)
    assert count.get_total_flops() == b * forward_flops(cfg, shape)["total"]


def test_training_is_about_three_forwards():
    """Backward skips the input gradients of the first layers, so it is a little under 2x."""
    model = WallWM(CFG)
    with counter() as count:
        model(Batch(*inputs(3, 12, 10)), generator=torch.Generator().manual_seed(0))["loss"].backward()
    estimate = 3 * train_flops(CFG, SampleShape.of(CFG, 12, K, 10))  # batch of 3
    assert 0.95 * estimate < count.get_total_flops() <= estimate


def test_recompute_extra_flops():
    shape = SampleShape.of(CFG, 12, K, 10)
    parts = forward_flops(CFG, shape)
    assert recompute_flops(CFG, shape) == 0
    assert recompute_flops(replace(CFG, recompute="full"), shape) == parts["video_tower"] + parts["action_tower"]
    selective = recompute_flops(replace(CFG, recompute="selective"), shape)
    assert 0 < selective == attention_core_flops(CFG, shape) < parts["total"]
