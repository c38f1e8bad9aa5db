"""A held-out event as the video predictors see it, and the error of what cannot be scored.

Apart from ``eval/video_predict.py`` (which reads events and holds the predictors' table) so
that each video tower's predictor module can name them without importing that table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class WorldModelError(ValueError):
    """The checkpoint or the held-out shards cannot be scored (named, with the reason)."""


@dataclass
class HeldoutEvent:
    key: str
    task: str
    caption: str
    frames: np.ndarray  # uint8 [T, V, H, W, 3], the recorded video at every control step
    state: np.ndarray  # float32 [S], the state at the first step, in the robot's units

    @property
    def length(self) -> int:
        return int(self.frames.shape[0])
