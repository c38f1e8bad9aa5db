"""Inputs of the towers: patchified video, action groups, the state token, captions, timesteps.

Video latents are a *fixed patchify* of the frames (no learned or pretrained encoder): each
latent frame is one observed frame every ``frame_stride`` control steps, cut into
``patch_size`` squares per camera view and scaled to [-1, 1]. It keeps the framework free of
downloaded weights; the cost is that the video tower denoises pixels, which is only sensible
at the small resolutions of the smoke world. A learned video VAE can replace
:func:`patchify` / :func:`unpatchify` without touching the towers.

Captions are UTF-8 byte tokens (vocabulary in ``wallwm_pretrain.captions``), encoded by a small
transformer: no tokenizer download either.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from wallwm_pretrain.captions import CAPTION_VOCAB


def patchify(frames: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, F, V, H, W, C] uint8 -> [B, F, V*(H/p)*(W/p), p*p*C] float in [-1, 1]."""
    b, f, v, h, w, c = frames.shape
    x = frames.float().div(127.5).sub(1.0)
    x = x.reshape(b, f, v, h // patch, patch, w // patch, patch, c)
    x = x.permute(0, 1, 2, 3, 5, 4, 6, 7)
    return x.reshape(b, f, v * (h // patch) * (w // patch), patch * patch * c)


def unpatchify(tokens: torch.Tensor, views: int, size: int, patch: int) -> torch.Tensor:
    """Inverse of :func:`patchify` (values stay in [-1, 1] float)."""
    b, f, _, _ = tokens.shape
    g = size // patch
    x = tokens.reshape(b, f, views, g, g, patch, patch, 3).permute(0, 1, 2, 3, 5, 4, 6, 7)
    return x.reshape(b, f, views, size, size, 3)


def sinusoidal(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Standard sinusoidal features of (possibly fractional) positions: [...] -> [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device) / half)
    args = positions.float()[..., None] * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def mark_adamw(module: nn.Module) -> nn.Module:
    """Input embeddings and output heads are optimised by AdamW, not Muon."""
    for p in module.parameters():
        p.use_adamw = True
    return module


class TimestepEmbedder(nn.Module):
    """Flow time t in [0, 1] -> conditioning vector for AdaLN."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(sinusoidal(t * 1000.0, self.hidden))


class CaptionEncoder(nn.Module):
    """Byte tokens -> caption states [L, B, H] (the text conditioner's features)."""

    def __init__(self, hidden: int, max_len: int, layers: nn.ModuleList) -> None:
        super().__init__()
        self.tokens = mark_adamw(nn.Embedding(CAPTION_VOCAB, hidden))
        self.position = mark_adamw(nn.Embedding(max_len + 1, hidden))
        self.layers = layers
        self.norm = nn.LayerNorm(hidden)

    def forward(self, tokens: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = (self.tokens(tokens) + self.position(positions)).transpose(0, 1)  # [L, B, H]
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.norm(x)
