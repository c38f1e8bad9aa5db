"""Analytical matmul FLOPs of the Wan video tower per sample, for the memory/compute plan and MFU.

Conventions as ``model/flops.py`` (2 FLOPs per multiply-add, padded shapes, elementwise work
left out). One sample has V views of ``S = F' H' W'`` tokens each (``P = H' W'`` per latent
frame), L text tokens; d hidden, f FFN width, ``D_in = C pt ph pw`` and ``D_out = C_out pt ph pw``
values per patch, ``n_t`` timestep entries (1, or S for per-token timesteps):

    per view and block:
      self-attention       = 8 S d^2 + 4 S^2 d
      cross-view attention = 8 S d^2 + 4 S (V P) d          (only with V > 1)
      cross-attention      = 4 S d^2 + 4 L d^2 + 4 S L d
      FFN                  = 4 S d f
    input side  = V 2 S D_in d  +  n_t (2 freq_dim d + 2 d^2 + 12 d^2)  +  2 L text_dim d + 2 L d^2
    output side = V 2 S d D_out

The condition embedder runs once per sample, not per view. ``attention_core`` is the part of
the blocks spent in scores and weighted sums.
"""

from __future__ import annotations

import math

from wallwm_pretrain.model.wan.config import WanConfig


def wan_forward_flops(cfg: WanConfig, latent_shape: tuple[int, int, int], text_len: int,
                      per_token_time: bool = False) -> dict[str, int]:
    """Forward matmul FLOPs of one sample by part (``total`` = blocks + input + output side).

    Args:
        cfg: the tower (``num_views`` views per sample).
        latent_shape: ``(F, H, W)`` latent frames, height and width of one view.
        text_len: text tokens L.
        per_token_time: ``[B, S]`` timesteps (Wan2.2 TI2V) instead of ``[B]``.
    """
    (f, h, w), (pt, ph, pw) = latent_shape, cfg.patch_size
    grid = (f // pt, h // ph, w // pw)
    s, p, v = math.prod(grid), grid[1] * grid[2], cfg.num_views
    d, ff, lt = cfg.hidden_size, cfg.ffn_dim, text_len
    patch = pt * ph * pw
    core = 4 * s * s * d + 4 * s * lt * d + (4 * s * v * p * d if cfg.cross_view else 0)
    linear = 8 * s * d * d + 4 * s * d * d + 4 * lt * d * d + 4 * s * d * ff + (8 * s * d * d if cfg.cross_view else 0)
    time_entries = s if per_token_time else 1
    parts = {
        "blocks": cfg.num_layers * v * (core + linear),
        "attention_core": cfg.num_layers * v * core,
        "input_side": v * 2 * s * cfg.in_channels * patch * d
        + time_entries * (2 * cfg.freq_dim * d + 2 * d * d + 12 * d * d)
        + 2 * lt * cfg.text_dim * d + 2 * lt * d * d,
        "output_side": v * 2 * s * d * cfg.out_dim * patch,
    }
    parts["total"] = parts["blocks"] + parts["input_side"] + parts["output_side"]
    return parts
