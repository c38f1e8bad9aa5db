"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

``lr_factor(step)`` is the multiplier of the peak learning rate used by the optimizer step with
0-based index ``step``. With t = step + 1 (steps done once this one is applied):

    t <= warmup:          t / warmup                          (1/warmup at the first step)
    warmup < t <= total:  min + (1 - min) (1 + cos(pi p)) / 2,  p = (t - warmup) / (total - warmup)
    t > total:            min

so the last step of the run (index total - 1) uses exactly ``min_lr_ratio * peak`` and the first
step never wastes an update at lr = 0. Trade-off: a run whose ``warmup_steps >= total_steps``
only warms up; it never decays (no error, so a short smoke run with the default warmup works).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def _check(warmup_steps: int, total_steps: int, min_lr_ratio: float) -> None:
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Multiplier of the peak learning rate for the optimizer step with 0-based index ``step``.

    Args:
        step: optimizer steps already taken (>= 0).
        warmup_steps: length of the linear warmup (0 = none).
        total_steps: step count at which the cosine reaches ``min_lr_ratio``.
        min_lr_ratio: floor of the decay, as a fraction of the peak.

    Returns:
        A float in (0, 1] (or in [min_lr_ratio, 1] once warmup is over).

    Raises:
        ValueError: negative step or warmup, total_steps < 1, min_lr_ratio outside [0, 1].
    """
    _check(warmup_steps, total_steps, min_lr_ratio)
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    t = step + 1
    if t <= warmup_steps:
        return t / warmup_steps
    if t >= total_steps:
        return min_lr_ratio if total_steps > warmup_steps else 1.0
    progress = (t - warmup_steps) / (total_steps - warmup_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float
) -> LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` to every param group of ``optimizer``.

    Call ``scheduler.step()`` after each ``optimizer.step()``. The lambda is a plain closure, so
    the scheduler's state_dict holds only its step count and base lrs, not the schedule's shape:
    a resumed run follows the schedule of its current config.

    Args:
        optimizer: the optimizer whose group lrs are the peaks.
        warmup_steps: see :func:`lr_factor`.
        total_steps: see :func:`lr_factor`.
        min_lr_ratio: see :func:`lr_factor`.

    Returns:
        The scheduler; the optimizer's lrs are already set for step 0.

    Raises:
        ValueError: as :func:`lr_factor`.
    """
    _check(warmup_steps, total_steps, min_lr_ratio)

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps, total_steps, min_lr_ratio)

    return LambdaLR(optimizer, factor)
