"""A trained text conditioner as an event planner: what to do next, and for how long.

Event mode needs, before each plan, the next event's description and the steps it has left.
With ``--events script`` the task's fixed script gives the description; with ``--events
predicted`` this planner does, from what the cameras see, the task and the events done so far
(``model/conditioner``). It owns what must match the conditioner's training: the state
normalisation of its shards, the views and the image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from wallwm_pretrain.data.cookers import Normalizer
from wallwm_pretrain.eval.policy import PolicyError, read_stats
from wallwm_pretrain.export import load_model
from wallwm_pretrain.model.conditioner.model import Prediction


class ConditionerPlanner:
    """Next event and remaining time from an observation, with a trained conditioner.

    Args:
        model: a :class:`~wallwm_pretrain.model.conditioner.model.TextConditioner` in eval mode.
        cfg: its run config; index: the ``index.json`` of the shards it was trained on.
    """

    def __init__(self, model, cfg, index: dict) -> None:
        if cfg.model.kind != "conditioner":  # the flag takes one model kind: a check of the input, not a dispatch
            raise PolicyError(f"--conditioner needs a checkpoint of model.kind=conditioner, this one is "
                              f"model.kind={cfg.model.kind}")
        self.model, self.cfg, self.index = model, cfg, index
        self.norm = Normalizer.from_index(index)
        self.device = next(model.parameters()).device

    @classmethod
    def load(cls, ckpt: str | Path, stats: str | Path | None = None, device: str = "cpu") -> "ConditionerPlanner":
        model, cfg = load_model(ckpt, device)
        return cls(model, cfg, read_stats(stats or cfg.data.shards))

    @property
    def views(self) -> list[str]:
        return list(self.index.get("views") or [])

    @property
    def image_size(self) -> int:
        return int(self.cfg.model.image_size)

    @property
    def state_dim(self) -> int:
        return int(self.cfg.model.state_dim)

    def next_event(self, frame: np.ndarray, state: np.ndarray, task: str, done: list[str]) -> Prediction:
        """The conditioner's answer for one observation.

        Args:
            frame: uint8 [V, H, W, 3] at the conditioner's image size, views in training order.
            state: float [S] in the robot's units.
            task: the task instruction; done: captions of the events finished so far, in order.
        """
        want = (len(self.views) or self.cfg.model.num_views, self.image_size, self.image_size, 3)
        if frame.shape != want:
            raise PolicyError(f"observation frame has shape {frame.shape}, the conditioner expects {want}")
        if state.shape != (self.state_dim,):
            raise PolicyError(f"state has shape {state.shape}, the conditioner expects ({self.state_dim},)")
        obs = torch.from_numpy(np.array(frame, dtype=np.uint8))[None].to(self.device)  # a copy: frames may be read-only
        st = torch.from_numpy(self.norm.state(state.astype(np.float32)))[None].to(self.device)
        # all align_tokens positions: the alignment head trains every one of them against the caption's
        # text-encoder states zero-padded as Wan reads them (model/conditioner/heads.py), so none is cut
        return self.model.predict(obs, st, [task], [list(done)])[0]
