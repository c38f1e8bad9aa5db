"""Success rates with confidence intervals, rollout frame strips, and the results table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sensible at 0/n and n/n, unlike the
    normal approximation, which collapses to a zero-width interval there)."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))  # p inside despite rounding


def save_strip(strip: list[tuple[int, str, np.ndarray]], title: str, path: str | Path, max_frames: int = 12) -> Path:
    """One row of frames (evenly picked from ``strip``), each titled with its step and event."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(strip) > max_frames:  # keep the first and last, evenly in between
        picks = np.linspace(0, len(strip) - 1, max_frames).round().astype(int)
        strip = [strip[i] for i in picks]
    fig = Figure(figsize=(1.6 * len(strip), 2.1), dpi=100)
    FigureCanvasAgg(fig)
    for i, (step, label, frame) in enumerate(strip):
        ax = fig.add_subplot(1, len(strip), i + 1)
        ax.imshow(frame)
        ax.set_title(f"t={step}\n{label}", fontsize=7)
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def rate_cell(successes: int, trials: int) -> str:
    lo, hi = wilson_interval(successes, trials)
    return f"{successes}/{trials} = {successes / max(trials, 1):.0%} [{lo:.0%}, {hi:.0%}]"
