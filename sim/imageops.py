"""Frame resizing in numpy, shared by shard building, closed-loop evaluation and serving.

Area (box) resampling, done as two batched matrix products (BLAS, so a whole episode resizes
in milliseconds): exact box averaging for integer
factors such as 64 -> 32, and proper fractional-overlap weights otherwise. No image library is
needed and the result is bit-for-bit reproducible; the trade-off is that upscaling is only
nearest-like, which shard building never needs.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def _area_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] matrix whose rows average the input cells each output cell covers."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for o in range(n_out):
        lo, hi = edges[o], edges[o + 1]
        for i in range(int(np.floor(lo)), min(int(np.ceil(hi)), n_in)):
            w[o, i] = max(0.0, min(hi, i + 1) - max(lo, i))
        w[o] /= w[o].sum()
    return w.astype(np.float32)


def resize_area(frames: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Resize uint8 frames [..., H, W, C] to [..., h, w, C] by area averaging."""
    h, w = (size, size) if isinstance(size, int) else size
    H, W = frames.shape[-3], frames.shape[-2]
    if (H, W) == (h, w):
        return frames.copy()
    lead, C = frames.shape[:-3], frames.shape[-1]
    x = frames.reshape(-1, H, W * C).astype(np.float32)
    x = np.matmul(_area_weights(H, h), x)  # rows:    [B, h, W*C]
    x = np.matmul(_area_weights(W, w), x.reshape(-1, W, C))  # columns: [B*h, w, C]
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(*lead, h, w, C)
