"""The WALL-WM-style model: towers, coupling, embeddings, flow-matching losses."""

from wallwm_pretrain.model.wallwm import WallWM

__all__ = ["WallWM"]
