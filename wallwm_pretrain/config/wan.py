"""The one schema of a Wan-architecture video tower's shape (``model.wan``).

Fields carry diffusers' ``WanTransformer3DModel`` argument names (its config.json keys); the
defaults are Wan2.2 TI2V-5B's published config, the tower the presets start from. The model's
``WanConfig`` (``model/wan/config.py``) extends this class with the depth and the grafted
multi-view parts rather than repeating the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

from wallwm_pretrain.config.base import ConfigError


@dataclass
class WanTowerConfig:
    """The shape of a Wan-architecture video tower (``model.video_tower=wan``): the arguments of
    diffusers' ``WanTransformer3DModel`` (its config.json), less the depth, which is
    ``model.num_layers`` (both towers have it). Defaults: Wan2.2 TI2V-5B's published config."""

    patch_size: List[int] = field(default_factory=lambda: [1, 2, 2])
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    in_channels: int = 48
    out_channels: int = 48
    text_dim: int = 4096
    freq_dim: int = 256
    ffn_dim: int = 14336
    cross_attn_norm: bool = True
    qk_norm: str = "rms_norm_across_heads"
    eps: float = 1e-6
    rope_max_seq_len: int = 1024

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or any(p < 1 for p in self.patch_size):
            raise ConfigError(f"model.wan.patch_size must be three ints >= 1 (t, h, w), got {list(self.patch_size)}")
        for name in ("num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
                     "freq_dim", "ffn_dim", "rope_max_seq_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.wan.{name} must be >= 1, got {getattr(self, name)}")
