"""A trained checkpoint as a policy: observation + caption in, actions in robot units out.

The policy owns everything that must match training exactly: the normalisation statistics of
the shards the model was trained on (``index.json``), the caption encoding, the model's frame
size, and the horizon it plans over (``data.max_frames`` in event mode, ``data.chunk_horizon``
in chunk mode, rounded up to whole latent frames).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wallwm_pretrain.config import Config
from wallwm_pretrain.captions import encode_caption
from wallwm_pretrain.data.cookers import Normalizer
from wallwm_pretrain.eval.sampler import sample_event
from wallwm_pretrain.export import load_model


class PolicyError(ValueError):
    """The checkpoint cannot act here (missing statistics, mismatched observation)."""


@dataclass
class Plan:
    actions: np.ndarray  # float32 [T, A] in the robot's units
    remaining: float  # predicted control steps to the end of the current event


def read_stats(path: str | Path) -> dict:
    """``index.json`` of a shard folder (or the file itself): statistics, views, sizes."""
    path = Path(path)
    index = path / "index.json" if path.is_dir() else path
    if not index.is_file():
        raise PolicyError(
            f"{index} not found: the policy needs the index.json of the shards the model was trained on "
            "(action/state statistics, camera views); pass --stats SHARD_FOLDER"
        )
    data = json.loads(index.read_text())
    if "stats" not in data:
        raise PolicyError(f"{index}: has no 'stats' (action/state normalisation); rebuild the shards")
    return data


class CheckpointPolicy:
    """Plans an event (or chunk) from the current observation with a trained model.

    Args:
        model: the whole model, eval mode; cfg: its run config.
        index: the training shards' ``index.json`` (statistics, views).
        denoise_steps: Euler steps per plan.
    """

    def __init__(self, model, cfg: Config, index: dict, denoise_steps: int = 10) -> None:
        self.model, self.cfg, self.index = model, cfg, index
        self.norm = Normalizer.from_index(index)
        self.denoise_steps = denoise_steps
        self.device = next(model.parameters()).device
        k = cfg.model.frame_stride
        raw = cfg.data.max_frames if cfg.data.mode == "event" else cfg.data.chunk_horizon
        self.horizon = -(-raw // k) * k
        for name, want in (("state_dim", cfg.model.state_dim), ("action_dim", cfg.model.action_dim)):
            got = index.get(name)
            if got is not None and got != want:
                raise PolicyError(f"the statistics' {name} is {got} but the model's is {want}: wrong --stats?")

    @classmethod
    def load(cls, ckpt: str | Path, stats: str | Path | None = None, device: str = "cpu",
             denoise_steps: int = 10) -> "CheckpointPolicy":
        model, cfg = load_model(ckpt, device)
        return cls(model, cfg, read_stats(stats or cfg.data.shards), denoise_steps)

    @property
    def mode(self) -> str:
        return self.cfg.data.mode

    @property
    def views(self) -> list[str]:
        return list(self.index.get("views") or [])

    @property
    def image_size(self) -> int:
        return self.cfg.model.image_size

    def caption_tokens(self, text: str) -> torch.Tensor:
        return torch.from_numpy(encode_caption(text, self.cfg.model.caption_max_bytes))[None].to(self.device)

    def plan(self, frame: np.ndarray, state: np.ndarray, caption: str, generator: torch.Generator) -> Plan:
        """Denoise ``self.horizon`` steps from this observation.

        Args:
            frame: uint8 [V, H, W, 3] at the model's image size, views in training order.
            state: float [S] in the robot's units.
            caption: the next-event description (event mode) or the task (chunk mode).
        """
        want = (self.cfg.model.num_views, self.image_size, self.image_size, 3)
        if frame.shape != want:
            raise PolicyError(f"observation frame has shape {frame.shape}, the model expects {want}")
        if state.shape != (self.cfg.model.state_dim,):
            raise PolicyError(f"state has shape {state.shape}, the model expects ({self.cfg.model.state_dim},)")
        first = torch.from_numpy(np.ascontiguousarray(frame))[None].to(self.device)
        st = torch.from_numpy(self.norm.state(state.astype(np.float32)))[None].to(self.device)
        cap = self.caption_tokens(caption)
        actions, _ = sample_event(self.model, first, st, cap, self.horizon, self.denoise_steps, generator)
        with torch.no_grad():
            remaining = float(self.model.remaining_steps(first, st, cap)[0])
        return Plan(self.norm.raw_actions(actions[0].float().cpu().numpy()).astype(np.float32), remaining)
