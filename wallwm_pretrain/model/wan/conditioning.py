"""Wan's condition embedder: flow time -> (temb, six modulation vectors), text states -> hidden.

diffusers' ``WanTimeTextImageEmbedding`` without the image branch: a sinusoidal embedding of the
timestep (``freq_dim`` channels, cos first, frequencies ``10000^(-i / (freq_dim / 2))``,
float32), an MLP ``linear_1 -> SiLU -> linear_2`` to ``temb``, ``time_proj(SiLU(temb))`` to the
``6 * hidden`` modulation of every block, and ``linear_1 -> GELU(tanh) -> linear_2`` on the text
encoder's states.

Plain ``nn.Linear`` layers, replicated on every tensor-parallel rank: they run once per sample
(not per token), so splitting them would save little and cost collectives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wallwm_pretrain.model.wan.config import WanConfig

MAX_PERIOD = 10000


def timestep_sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``[n] -> [n, dim]`` float32: cos then sin of ``t * 10000^(-i / (dim/2))``."""
    half = dim // 2
    freqs = torch.exp(-math.log(MAX_PERIOD) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TwoLayerMLP(nn.Module):
    """``linear_2(act(linear_1(x)))`` (diffusers' ``TimestepEmbedding`` / ``PixArtAlphaTextProjection``)."""

    def __init__(self, in_features: int, hidden: int, activation) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.activation(self.linear_1(x)))


class WanConditioning(nn.Module):
    """Flow-time and text embedders of the tower's first pipeline slice."""

    def __init__(self, cfg: WanConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.freq_dim = cfg.freq_dim
        self.time_embedder = TwoLayerMLP(cfg.freq_dim, d, F.silu)
        self.time_proj = nn.Linear(d, 6 * d)
        self.text_embedder = TwoLayerMLP(cfg.text_dim, d, lambda x: F.gelu(x, approximate="tanh"))

    def forward(self, timestep: torch.Tensor, text_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``timestep`` ``[n]`` (Wan's scale, 0..1000), ``text_states`` ``[B, L, text_dim]`` ->
        ``temb`` ``[n, d]``, modulation ``[n, 6, d]``, text ``[B, L, d]`` (text states' dtype)."""
        sinusoid = timestep_sinusoid(timestep, self.freq_dim).to(self.time_embedder.linear_1.weight.dtype)
        temb = self.time_embedder(sinusoid).type_as(text_states)
        modulation = self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))
        return temb, modulation, self.text_embedder(text_states)
