"""A policy server as a policy: the closed-loop runner's interface over :class:`PolicyClient`.

The runner asks a policy for ``plan(frame, state, caption, episode)``; here that becomes one
request to ``python -m wallwm_pretrain.serve``. The first request of an episode carries the
episode's seed, which restarts the connection's noise stream on the server, so the plans of an
episode are the ones the in-process :class:`CheckpointPolicy` draws with that seed: evaluation
through the server gives the same episodes as evaluation in-process (tested). Frames are resized
to the model's size here, by the same code as in-process, and sent at that size: smaller
requests, and no dependence on the server's resize for the equality (the server would resize
raw frames identically per view, but a batched and a per-view resize need not round alike).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wallwm_pretrain.client import PolicyClient
from wallwm_pretrain.eval.policy import Plan


@dataclass
class EpisodeSeed:
    seed: int
    sent: bool = False


class RemotePolicy:
    """Args: uri: ``ws://host:port`` of a policy server; api_key: its key, if it has one."""

    def __init__(self, uri: str, api_key: str | None = None) -> None:
        self.client = PolicyClient(uri, api_key)
        meta = self.client.metadata
        self.uri, self.metadata = uri, meta
        self.mode: str = meta["mode"]
        self.views: list[str] = list(meta["views"])
        self.image_size: int = int(meta["image_size"][0])
        self.state_dim: int = int(meta["state_dim"])
        self.action_dim: int = int(meta["action_dim"])
        self.num_views = len(self.views)
        self.horizon: int = int(meta["horizon"])
        self.fps = meta.get("fps")

    def new_episode(self, seed: int) -> EpisodeSeed:
        return EpisodeSeed(seed)

    def plan(self, frame: np.ndarray, state: np.ndarray, caption: str, episode: EpisodeSeed) -> Plan:
        obs = {"images": {v: frame[i] for i, v in enumerate(self.views)},
               "state": np.asarray(state, np.float32), "prompt": caption}
        if not episode.sent:
            obs["seed"] = episode.seed
            episode.sent = True
        reply = self.client.infer(obs)
        return Plan(np.asarray(reply["actions"], np.float32), float(reply.get("remaining_steps", self.horizon)))

    def close(self) -> None:
        self.client.close()
