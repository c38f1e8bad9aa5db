"""The WALL-WM-style model: towers, coupling, embeddings, flow-matching losses."""

from wallwm_pretrain.model.wallwm import LOSS_KEYS, WallWM

__all__ = ["LOSS_KEYS", "WallWM"]
