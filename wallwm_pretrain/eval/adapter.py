"""Any gymnasium-style environment <-> the policy's observation and action, configured in YAML.

A policy wants ``images`` (view -> uint8 [H, W, 3]), ``state`` (float [S], the layout it was
trained with) and ``prompt``; environments name and lay out the same things their own way. An
adapter says, per model view, which key of the environment's observation dict holds that camera,
which keys (and which of their entries) make up the state, in order, and how a model action
maps to the environment's action (scale, offset, clip):

    images:                       # model view -> observation key
      corner: pixels/corner       # "a/b" walks nested dicts
      gripperPOV: pixels/wrist
    state:                        # concatenated in this order
      - {key: agent_pos}          # the whole array
      - {key: obs, index: [0, 1, 2, 3]}
    action: {scale: 1.0, offset: 0.0, low: -1.0, high: 1.0}

Meta-World's closed-loop evaluation goes through this class too (``configs/adapters/``); its
observation dict is built by :mod:`wallwm_pretrain.eval.metaworld`. What it does not do:
derived quantities (velocities, frame stacking) must already be keys of the observation, which
keeps the YAML a plain mapping rather than a small language.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class AdapterError(ValueError):
    """The adapter's YAML or an observation does not fit; the message names the key."""


@dataclass
class StatePart:
    key: str
    index: list[int] | None = None


@dataclass
class EnvAdapter:
    images: dict[str, str]
    state: list[StatePart]
    action_scale: float | list[float] = 1.0
    action_offset: float | list[float] = 0.0
    action_low: float | None = None
    action_high: float | None = None
    source: str = field(default="<dict>", compare=False)

    @classmethod
    def from_dict(cls, cfg: dict, source: str = "<dict>") -> "EnvAdapter":
        unknown = set(cfg) - {"images", "state", "action"}
        if unknown:
            raise AdapterError(f"{source}: unknown key(s) {sorted(unknown)} (expected images, state, action)")
        images = cfg.get("images")
        if not isinstance(images, dict) or not images:
            raise AdapterError(f"{source}: 'images' must map each model view to an observation key")
        parts = []
        for i, part in enumerate(cfg.get("state") or []):
            if not isinstance(part, dict) or "key" not in part or set(part) - {"key", "index"}:
                raise AdapterError(f"{source}: state[{i}] must be {{key: NAME}} or {{key: NAME, index: [i, ...]}}, got {part!r}")
            parts.append(StatePart(str(part["key"]), None if part.get("index") is None else [int(j) for j in part["index"]]))
        if not parts:
            raise AdapterError(f"{source}: 'state' must list at least one {{key: NAME}}")
        action = cfg.get("action") or {}
        if set(action) - {"scale", "offset", "low", "high"}:
            raise AdapterError(f"{source}: action takes scale, offset, low, high; got {sorted(action)}")
        return cls({str(k): str(v) for k, v in images.items()}, parts, action.get("scale", 1.0),
                   action.get("offset", 0.0), action.get("low"), action.get("high"), source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "EnvAdapter":
        import yaml

        path = Path(path)
        if not path.is_file():
            raise AdapterError(f"{path}: adapter file not found")
        return cls.from_dict(yaml.safe_load(path.read_text()) or {}, str(path))

    def check(self, views: list[str], state_dim: int, example: dict | None = None) -> None:
        """Raise unless the adapter gives exactly the model's views (and, with an example
        observation, a state of the model's width)."""
        if sorted(self.images) != sorted(views):
            raise AdapterError(f"{self.source}: images map views {sorted(self.images)} but the model takes {sorted(views)}")
        if example is not None:
            width = self.state_of(example).shape[0]
            if width != state_dim:
                raise AdapterError(f"{self.source}: the state parts give {width} values, the model takes {state_dim}")

    @staticmethod
    def _get(obs: dict, key: str) -> Any:
        node = obs
        for part in key.split("/"):
            if not isinstance(node, dict) or part not in node:
                have = sorted(node) if isinstance(node, dict) else type(node).__name__
                raise AdapterError(f"the observation has no key '{key}' (at '{part}': has {have})")
            node = node[part]
        return node

    def images_of(self, obs: dict) -> dict[str, np.ndarray]:
        out = {}
        for view, key in self.images.items():
            img = np.asarray(self._get(obs, key))
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise AdapterError(f"observation '{key}' (view {view}): {img.dtype} {img.shape}, expected uint8 [H, W, 3]")
            out[view] = img
        return out

    def state_of(self, obs: dict) -> np.ndarray:
        parts = []
        for part in self.state:
            value = np.asarray(self._get(obs, part.key), dtype=np.float64).reshape(-1)
            if part.index is not None:
                bad = [j for j in part.index if not -value.size <= j < value.size]
                if bad:
                    raise AdapterError(f"state key '{part.key}' has {value.size} values; index {bad} is out of range")
                value = value[part.index]
            parts.append(value)
        return np.concatenate(parts).astype(np.float32)

    def request(self, obs: dict, prompt: str) -> dict:
        """The policy server's observation dict for this environment observation."""
        return {"images": self.images_of(obs), "state": self.state_of(obs), "prompt": prompt}

    def action(self, model_action: np.ndarray) -> np.ndarray:
        """A model action (robot units of the training data) -> the environment's action."""
        a = np.asarray(model_action)
        scale, offset = np.asarray(self.action_scale), np.asarray(self.action_offset)
        if not ((scale == 1).all() and (offset == 0).all()):
            # an identity mapping leaves the dtype alone, so the environment steps exactly as
            # with the raw actions
            a = a * scale + offset
        if self.action_low is not None or self.action_high is not None:
            a = np.clip(a, self.action_low, self.action_high)
        return a
