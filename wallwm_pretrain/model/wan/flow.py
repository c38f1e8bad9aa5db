"""Wan's flow-time conventions for the video tower.

Wan trains rectified flow with the project's convention (``x_t = (1 - t) x_0 + t noise``,
velocity target ``noise - x_0``, see ``model/flow_matching.py``) and reads the flow time as a
timestep on a 0..1000 scale. Wan2.2 TI2V keeps its first latent frame clean by giving that
frame's tokens timestep 0 (per-token timesteps, ``[B, S]``).
"""

from __future__ import annotations

import torch

NUM_TRAIN_TIMESTEPS = 1000  # Wan's timestep scale (its scheduler's num_train_timesteps)


def wan_timestep(t: torch.Tensor) -> torch.Tensor:
    """Flow time in [0, 1] -> Wan's timestep input (``1000 * t``)."""
    return t * NUM_TRAIN_TIMESTEPS


def per_token_timesteps(t: torch.Tensor, grid: tuple[int, int, int], clean_frames: int = 1) -> torch.Tensor:
    """``[B]`` flow times -> ``[B, S]`` timesteps of the patch grid, 0 on the first
    ``clean_frames`` patch frames (the condition), ``1000 * t`` elsewhere."""
    f, h, w = grid
    if not 0 <= clean_frames <= f:
        raise ValueError(f"clean_frames={clean_frames} is not within the grid's {f} patch frames")
    per_frame = torch.ones(f, device=t.device, dtype=t.dtype)
    per_frame[:clean_frames] = 0
    return wan_timestep(t)[:, None] * per_frame.repeat_interleave(h * w)[None]
