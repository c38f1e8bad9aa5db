"""Wan's 3-D rotary position embedding over (latent frame, height, width) patches.

The head dimension is split as diffusers' ``WanRotaryPosEmbed`` splits it: ``h = w = 2 *
(head_dim // 6)`` channels for height and width, the rest for time, in that order (t, h, w).
Each part rotates *interleaved* pairs of channels ``(2i, 2i+1)`` by ``position * theta^(-2i /
part)``; the angles are computed in float64 and their cos/sin stored in float32, as Wan does.
"""

from __future__ import annotations

import torch


def _axis_angles(dim: int, positions: int, theta: float, device) -> torch.Tensor:
    """[positions, dim / 2] float64 angles of one axis."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=device) / dim))
    return torch.outer(torch.arange(positions, dtype=torch.float64, device=device), inv_freq)


def head_dim_split(head_dim: int) -> tuple[int, int, int]:
    """Channels of the head dimension given to (frame, height, width)."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def rope_3d(head_dim: int, grid: tuple[int, int, int], theta: float = 10000.0,
            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every patch of a (frames, height, width) grid, in row-major patch order.

    Returns:
        ``(cos, sin)``, each float32 ``[F * H * W, head_dim / 2]`` (one angle per pair).
    """
    f, h, w = grid
    dt, dh, dw = head_dim_split(head_dim)
    af = _axis_angles(dt, f, theta, device)[:, None, None, :].expand(f, h, w, -1)
    ah = _axis_angles(dh, h, theta, device)[None, :, None, :].expand(f, h, w, -1)
    aw = _axis_angles(dw, w, theta, device)[None, None, :, :].expand(f, h, w, -1)
    angles = torch.cat([af, ah, aw], dim=-1).reshape(f * h * w, head_dim // 2)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x`` ``[s, b, heads, head_dim]`` by ``cos/sin``
    ``[s, head_dim / 2]`` (float32 arithmetic, result in ``x``'s dtype)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    x1, x2 = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, None, :], sin[:, None, None, :]
    out = torch.stack([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1).flatten(-2)
    return out.type_as(x)
