"""What a request must hold, checked before it reaches the model.

A request is one observation: ``images`` (view name -> uint8 [H, W, 3] RGB), ``state`` (float
[S] in the robot's units), ``prompt`` (the next event's description in event mode, the task
instruction in chunk mode) and optionally ``seed`` (restarts the connection's noise stream).
Every problem is reported with the key it concerns and what was expected, e.g.
``images.corner: dtype float32, expected uint8 (RGB 0-255)``, and the server answers the next
request as usual. Unknown keys are refused rather than ignored, so a misspelt key is caught on
the first request instead of silently dropping an input. Images of another size are resized here
by area averaging, the resize ``build-shards`` applied to the training frames; upscaling
(a camera smaller than the model's frames) is only nearest-like.

numpy only: no torch, so the checks cost microseconds and run on the event loop.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.imageops import resize_area

TEXT_KEY = "prompt"
MAX_IMAGE_SIDE = 4096  # a larger side is a mistake (or an attack), not a camera
MAX_SEED = 2**63 - 1


class RequestError(ValueError):
    """The request does not match what the model expects; the message names the key."""


@dataclass(frozen=True)
class Observation:
    frame: np.ndarray  # uint8 [V, H, W, 3] at the model's size, views in the model's order
    state: np.ndarray  # float32 [S], robot units
    prompt: str
    seed: int | None


@dataclass(frozen=True)
class ObservationSpec:
    views: tuple[str, ...]
    image_size: tuple[int, int]
    state_dim: int
    text_meaning: str  # what the prompt is: the planner's (eval/planners), e.g. the next event's description

    def describe(self) -> dict[str, Any]:
        """The ``observation`` part of the server's metadata."""
        h, w = self.image_size
        return {
            "images": {v: {"dtype": "uint8", "shape": [h, w, 3]} for v in self.views},
            "state": {"dtype": "float32", "shape": [self.state_dim]},
            TEXT_KEY: {"type": "str", "meaning": self.text_meaning},
            "seed": {"type": "int", "optional": True,
                     "meaning": "restart this connection's sampling noise from this seed"},
            "note": "images of another size are resized on the server (area averaging)",
        }

    def check(self, obs: Any) -> Observation:
        """A valid :class:`Observation`, or :class:`RequestError` naming the key at fault."""
        if not isinstance(obs, dict):
            raise RequestError(f"the request must be a map with keys images, state, {TEXT_KEY}; "
                               f"got {type(obs).__name__}")
        allowed = ("images", "state", TEXT_KEY, "seed")
        for key in obs:
            if key not in allowed:
                near = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f"; did you mean '{near[0]}'?" if near else ""
                raise RequestError(f"unknown key '{key}' (expected: {', '.join(allowed)}){hint}")
        return Observation(self._frame(obs), self._state(obs), self._prompt(obs), self._seed(obs))

    def _frame(self, obs: dict) -> np.ndarray:
        h, w = self.image_size
        if "images" not in obs:
            raise RequestError(f"missing key 'images': a map of view -> uint8 [H, W, 3] image, "
                               f"views {', '.join(self.views)}")
        images = obs["images"]
        if not isinstance(images, dict):
            raise RequestError(f"images: expected a map of view -> image, got {type(images).__name__}")
        for view in images:
            if view not in self.views:
                raise RequestError(f"images: unknown view '{view}' (this model's views: {', '.join(self.views)})")
        out = []
        for view in self.views:
            key = f"images.{view}"
            if view not in images:
                raise RequestError(f"missing key '{key}': a uint8 [H, W, 3] image "
                                   f"(the model takes views {', '.join(self.views)})")
            img = images[view]
            if not isinstance(img, np.ndarray):
                raise RequestError(f"{key}: expected a numpy uint8 array [H, W, 3], got {type(img).__name__}")
            if img.dtype != np.uint8:
                raise RequestError(f"{key}: dtype {img.dtype}, expected uint8 (RGB 0-255)")
            if img.ndim != 3 or img.shape[2] != 3:
                raise RequestError(f"{key}: shape {tuple(img.shape)}, expected [H, W, 3] "
                                   f"(RGB; the model's frames are [{h}, {w}, 3], other sizes are resized)")
            if not (1 <= img.shape[0] <= MAX_IMAGE_SIDE and 1 <= img.shape[1] <= MAX_IMAGE_SIDE):
                raise RequestError(f"{key}: shape {tuple(img.shape)}, sides must be 1..{MAX_IMAGE_SIDE}")
            out.append(img if img.shape[:2] == (h, w) else resize_area(img, (h, w)))
        return np.stack(out)

    def _state(self, obs: dict) -> np.ndarray:
        want = f"float32 [{self.state_dim}] in the robot's units"
        if "state" not in obs:
            raise RequestError(f"missing key 'state': {want}")
        state = obs["state"]
        if isinstance(state, list):
            state = np.asarray(state, dtype=np.float64) if all(isinstance(x, (int, float)) for x in state) else state
        if not isinstance(state, np.ndarray):
            raise RequestError(f"state: expected a numpy array {want}, got {type(state).__name__}")
        if state.dtype.kind != "f":
            raise RequestError(f"state: dtype {state.dtype}, expected a float array ({want})")
        if state.shape != (self.state_dim,):
            raise RequestError(f"state: shape {tuple(state.shape)}, expected ({self.state_dim},)")
        bad = np.flatnonzero(~np.isfinite(state))
        if bad.size:
            raise RequestError(f"state: {bad.size} non-finite value(s) (NaN or inf) at index "
                               f"{', '.join(map(str, bad[:8].tolist()))}; expected finite floats")
        return state.astype(np.float32)

    def _prompt(self, obs: dict) -> str:
        if TEXT_KEY not in obs:
            raise RequestError(f"missing key '{TEXT_KEY}': {self.text_meaning}")
        text = obs[TEXT_KEY]
        if not isinstance(text, str) or not text.strip():
            raise RequestError(f"{TEXT_KEY}: expected a non-empty string ({self.text_meaning}), "
                               f"got {type(text).__name__} {text!r:.40}")
        return text

    def _seed(self, obs: dict) -> int | None:
        seed = obs.get("seed")
        if seed is None:
            return None
        if isinstance(seed, np.integer):
            seed = int(seed)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            raise RequestError(f"seed: expected an integer in [0, 2**63), got {seed!r:.40}")
        return seed
