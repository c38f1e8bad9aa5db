"""Rectified-flow matching: the training objective of both towers.

x_t = (1 - t) * x_0 + t * noise, and the network predicts the velocity ``noise - x_0`` (Wan's
objective too: its sigma is t, its timestep input ``1000 * t``). Flow times are uniform, or
shifted towards the noise end for the video tower (``model.video_time_shift``, Wan's schedule);
the action tower keeps the uniform schedule.
Losses are mean squared errors over the *real* elements only: padding beyond an event's
length never contributes, so variable-length events weigh by their true size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy sample at time t (per batch element) and the velocity target."""
    tt = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1.0 - tt) * x0 + tt * noise, noise - x0


def weighted_flow_loss(video_weight: float, loss_video: torch.Tensor, action_weight: float,
                       loss_action: torch.Tensor) -> torch.Tensor:
    """``video_weight * loss_video + action_weight * loss_action``, leaving out a term weighted 0.

    A term left out is not in the autograd graph of the total: backward does not run through the
    tower that produced it (a frozen tower whose loss a training stage switches off costs no
    backward, e.g. the action tower in video pretraining), and a non-finite value of it cannot
    reach the total (``0 * nan`` is nan). With both weights 0 the total is ``0 * loss_video``.
    """
    terms = [w * l for w, l in ((video_weight, loss_video), (action_weight, loss_action)) if w != 0]
    if not terms:
        return loss_video * 0.0
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, denominator: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over masked-in elements; ``mask`` broadcasts over trailing dims of pred.

    ``denominator`` replaces the local count of masked-in elements: a data-parallel rank that
    holds part of a global batch divides its squared-error sum by the *global* count, so the
    shares of all ranks add up to the global-batch mean.
    """
    while mask.dim() < pred.dim():
        mask = mask.unsqueeze(-1)
    mask = mask.to(pred.dtype).expand_as(pred)
    # A given denominator keeps its own (fp32) dtype: global counts exceed bf16's 8-bit mantissa.
    denom = mask.sum() if denominator is None else denominator
    return ((pred - target) ** 2 * mask).sum() / denom.clamp_min(1.0)


def noise_seed(seed: int, step: int, replica: int) -> int:
    """The seed of a step's flow draws: a function of (run seed, step, data-parallel rank) only.

    Tensor-parallel and pipeline peers of one data-parallel rank draw alike (they compute one
    forward together), data-parallel ranks draw differently (they hold different samples), and
    a resumed run draws what the uninterrupted run would have.
    """
    return (seed * 1_000_003 + step) * 65_537 + replica


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan's shifted schedule: ``shift * t / (1 + (shift - 1) * t)``.

    A monotone map of [0, 1] onto itself that keeps both ends; ``shift > 1`` moves flow times
    towards the noise end (Wan trains and samples its video model with such a shift, e.g. 5),
    ``shift = 1`` is the identity. Applied to uniform draws it is the training time schedule.
    """
    if shift <= 0:
        raise ValueError(f"the flow-time shift must be > 0, got {shift}")
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_time(
    batch: int, device: torch.device, generator: torch.Generator | None = None, shift: float = 1.0
) -> torch.Tensor:
    """Flow time per sample: uniform in [0, 1), then :func:`shift_time` (1 = no shift).

    The shift does not change what is drawn from ``generator``, only the map applied after.
    """
    return shift_time(torch.rand(batch, device=device, generator=generator), shift)


@dataclass
class FlowNoise:
    """Flow times and noise of one batch, drawn ahead of the forward.

    Drawing them outside the forward lets several processes use the same draws: tensor-parallel
    peers pass identical noise, and a data-parallel rank passes its rows of the noise drawn for
    the whole global batch, so its samples see exactly what a single process would.
    """

    t_video: torch.Tensor  # [B]
    noise_video: torch.Tensor  # [B, F, P, D]
    t_action: torch.Tensor  # [B]
    noise_action: torch.Tensor  # [B, T, A]

    def rows(self, start: int, stop: int) -> "FlowNoise":
        """The draws of samples ``start:stop`` of the batch."""
        return FlowNoise(*(x[start:stop] for x in (self.t_video, self.noise_video, self.t_action, self.noise_action)))
