"""A tiny random diffusers ``WanTransformer3DModel`` and seeded inputs, shared by the Wan tower
tests and their gloo ranks."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from wallwm_pretrain.config import OptimConfig

warnings.filterwarnings("ignore")

# 4 heads of 12 channels (RoPE split t/h/w = 4/4/4), text_dim 16, patch (1, 2, 2), no image branch
TINY = dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=12, in_channels=4, out_channels=4,
            text_dim=16, freq_dim=32, ffn_dim=64, num_layers=2, cross_attn_norm=True, eps=1e-6, rope_max_seq_len=32)
# owner-mode Muon (each logical matrix orthogonalised once, on its home rank) + AdamW, no warmup
OPTIM = OptimConfig(lr=0.02, adamw_lr=0.003, weight_decay=0.01, warmup_steps=0, grad_clip=0.5, muon_mode="owner")
LATENT = (4, 3, 8, 6)  # C, F, H, W: a 3 x 4 x 3 patch grid, 36 tokens per view
TEXT_LEN = 5


def make_tiny(folder: Path, **overrides):
    """A random ``WanTransformer3DModel`` (every tensor perturbed, so norm gains and zero-initialised
    biases are not trivially 1 or 0) saved with ``save_pretrained``; returns the model."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    model = WanTransformer3DModel(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return model


def inputs(batch: int = 2, views: int = 1, per_token: bool = False):
    """Seeded latents ``[B, V, C, F, H, W]``, timesteps (``[B]`` or ``[B, S]``), text ``[B, L, 16]``
    and the output weights of a scalar loss."""
    g = torch.Generator().manual_seed(7)
    latents = torch.randn(batch, views, *LATENT, generator=g)
    tokens = LATENT[1] * (LATENT[2] // 2) * (LATENT[3] // 2)
    timestep = torch.rand(batch, tokens, generator=g) * 1000 if per_token else torch.tensor([10.0, 700.0][:batch])
    text = torch.randn(batch, TEXT_LEN, TINY["text_dim"], generator=g)
    weights = torch.randn(batch, views, *LATENT, generator=g)
    return latents, timestep, text, weights
