"""Rectified-flow matching: the training objective of both towers.

x_t = (1 - t) * x_0 + t * noise, and the network predicts the velocity ``noise - x_0``.
Losses are mean squared errors over the *real* elements only: padding beyond an event's
length never contributes, so variable-length events weigh by their true size.
"""

from __future__ import annotations

import torch


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy sample at time t (per batch element) and the velocity target."""
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1.0 - tt) * x0 + tt * noise, noise - x0


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked-in elements; ``mask`` broadcasts over trailing dims of pred."""
    while mask.dim() < pred.dim():
        mask = mask.unsqueeze(-1)
    mask = mask.to(pred.dtype).expand_as(pred)
    denom = mask.sum().clamp_min(1.0)
    return ((pred - target) ** 2 * mask).sum() / denom


def sample_time(batch: int, device: torch.device, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flow time per sample, uniform in [0, 1)."""
    return torch.rand(batch, device=device, generator=generator)
