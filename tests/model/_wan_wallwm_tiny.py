"""A tiny ``model.video_tower=wan`` config and seeded batches, shared by the model tests and the
gloo ranks of tests/parallel."""

from __future__ import annotations

import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import ModelConfig, WanTowerConfig

# the tiny Wan tower of _wan_tiny.py (4 heads of 12 channels, text_dim 16) under a 32-wide action tower
WAN = WanTowerConfig(patch_size=[1, 2, 2], num_attention_heads=4, attention_head_dim=12, in_channels=4,
                     out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, rope_max_seq_len=32)
K = 4
CFG = ModelConfig(video_tower="wan", wan=WAN, hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64,
                  frame_stride=K, num_views=2, action_dim=4, state_dim=8, image_size=16, patch_size=8,
                  video_time_shift=5.0, text_len=8)
LATENT_HW = (4, 6)  # a 2 x 3 patch grid per latent frame
TEXT_LEN = 6


def wan_batch(seed: int, b: int = 4, t: int = 12, views: int = 2, history: int = 0,
              latent_hw: tuple[int, int] = LATENT_HW) -> Batch:
    """Unequal lengths and caption paddings; latents of ``history`` + ceil(t / K) frames (the
    history latent frames drawn last, so ``history=0`` draws what it always has), each
    ``latent_hw`` per view."""
    g = torch.Generator().manual_seed(seed)
    n = -(-t // K)
    lengths = torch.tensor([t, 5, t - 3, 3][:b])
    actions = torch.randn(b, t, 4, generator=g) * (torch.arange(t)[None, :, None] < lengths[:, None, None])
    text_valid = torch.ones(b, TEXT_LEN, dtype=torch.bool)
    text_valid[1, 3:] = False
    if b > 3:
        text_valid[3, 5:] = False
    batch = Batch(
        frames=torch.zeros(b, t, 0, dtype=torch.uint8),  # the wan path reads latents, not pixels
        actions=actions, state=torch.randn(b, 8, generator=g), lengths=lengths,
        caption=torch.ones(b, 1, dtype=torch.long),
        remaining=lengths.float() + torch.tensor([0.0, 20.0, 3.0, 11.0][:b]),
        latents=torch.randn(b, views, WAN.in_channels, n, *latent_hw, generator=g),
        text_states=torch.randn(b, TEXT_LEN, WAN.text_dim, generator=g) * text_valid[..., None],
        text_valid=text_valid,
    )
    if history:
        past = torch.randn(b, views, WAN.in_channels, history, *latent_hw, generator=g)
        batch.latents = torch.cat([past, batch.latents], dim=3)
        batch.history = history
    return batch
