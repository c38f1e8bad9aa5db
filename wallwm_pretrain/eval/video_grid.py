"""A picture of a predicted event: recorded row, predicted row, per-pixel error row.

Columns are every ``every``-th latent frame (frame ``j`` at control step ``j * K_p``), the first
and the last always included; the views of a frame stand side by side in its cell. The error is
the mean absolute difference over the colour channels, 0 (black) to 255 (bright).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np


def grid_columns(frames: int, every: int) -> list[int]:
    """The frame indices shown: 0, every, 2 every, ... and the last."""
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    cols = list(range(0, frames, every))
    return cols if cols[-1] == frames - 1 else cols + [frames - 1]


def side_by_side(frame: np.ndarray) -> np.ndarray:
    """``[V, H, W, C]`` -> ``[H, V * W, C]``."""
    return np.concatenate(list(frame), axis=1)


def save_video_grid(recorded: np.ndarray, predicted: np.ndarray, path: str | Path, *, title: str,
                    every: int = 1, stride: int = 1) -> Path:
    """Write the grid of one event (uint8 ``[F, V, H, W, 3]`` each) as a PNG; ``stride`` (K_p)
    turns frame indices into the control steps of the column titles."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if recorded.shape != predicted.shape:
        raise ValueError(f"recorded {recorded.shape} and predicted {predicted.shape} frames differ in shape")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = grid_columns(recorded.shape[0], every)
    v, h, w = recorded.shape[1:4]
    aspect = v * w / h
    width = max(4.0, 1.0 + 1.3 * aspect * len(cols))
    fig = Figure(figsize=(width, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    error = np.abs(recorded.astype(np.int16) - predicted.astype(np.int16)).mean(axis=-1)  # [F, V, H, W]
    rows = [("recorded", recorded, {}), ("predicted", predicted, {}),
            ("|error|", error, {"cmap": "magma", "vmin": 0, "vmax": 255})]
    for r, (label, frames, style) in enumerate(rows):
        for c, j in enumerate(cols):
            ax = fig.add_subplot(3, len(cols), r * len(cols) + c + 1)
            ax.imshow(side_by_side(frames[j]), **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"step {j * stride}", fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(textwrap.fill(title, width=int(width * 14)), fontsize=8)  # about 14 characters an inch at 8 pt
    fig.tight_layout()
    fig.savefig(path)
    return path
