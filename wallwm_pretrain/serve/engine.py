"""The model side of the server: a checkpoint policy that answers batches of observations.

Everything that must match training (loading, normalisation statistics, caption encoding, the
planning horizon, sampling) is the evaluation's policy (:class:`CheckpointPolicy` for the small
towers, :class:`~wallwm_pretrain.eval.wan_policy.WanPolicy` for the Wan towers); this module only
turns checked observations into its batched call and its plans into reply dicts, and describes
the model in the metadata a client reads first. A lock serialises model calls, so a caller that
shares the model with a running server (the benchmark's in-process baseline) never overlaps a
batch.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wallwm_pretrain.eval.planners import planners_of, served_modes
from wallwm_pretrain.eval.policy import CheckpointPolicy, PolicyError
from wallwm_pretrain.serve.spec import Observation, ObservationSpec

PROTOCOL = "wallwm-policy/1"


class PolicyEngine:
    """Args: policy: a loaded checkpoint policy; checkpoint: where it came from; step: its step."""

    def __init__(self, policy: CheckpointPolicy | Any, checkpoint: str = "", step: int | None = None) -> None:
        self.policy, self.checkpoint, self.step = policy, checkpoint, step
        views = policy.views or [f"view{i}" for i in range(policy.num_views)]
        if len(views) != policy.num_views:
            raise ValueError(f"the statistics name views {views} but the model has {policy.num_views}")
        # the planner of the policy's mode says what a request's prompt is and whether the plan's
        # remaining time decides anything (the client runs the planner's loop, the server one plan)
        self.planner = planners_of(policy.mode)[0]  # the mode's default way (a class: it plans nothing here)
        if not self.planner.served:
            raise PolicyError(f"{policy.mode}-mode plans read what the requests do not carry (history frames); the "
                              f"policy server serves {' and '.join(served_modes())} mode")
        self.spec = ObservationSpec(tuple(views), (policy.image_size, policy.image_size), policy.state_dim,
                                    self.planner.prompt)
        self.lock = threading.Lock()

    @classmethod
    def load(cls, ckpt: str | Path, stats: str | Path | None = None, device: str = "cpu",
             denoise_steps: int = 10) -> "PolicyEngine":
        from wallwm_pretrain.export import checkpoint_step

        from wallwm_pretrain.eval.wan_policy import load_policy

        policy = load_policy(ckpt, stats, device, denoise_steps)
        return cls(policy, str(ckpt), checkpoint_step(ckpt))

    def new_generator(self, seed: int) -> torch.Generator:
        return self.policy.new_episode(seed)

    def metadata(self, **server: Any) -> dict[str, Any]:
        """The first message of every connection: what the model expects and returns."""
        p = self.policy
        norm = p.norm
        as_list = lambda x: None if x is None else np.asarray(x, np.float32).tolist()  # noqa: E731
        reply = {"actions": {"dtype": "float32", "shape": [p.horizon, p.action_dim], "units": "robot (de-normalised)"},
                 "server_timing": {"queue_ms": "float", "infer_ms": "float", "batch_size": "int"}}
        if self.planner.reports_remaining:
            reply["remaining_steps"] = {"type": "float", "meaning": "predicted control steps to the end of the event"}
        kind, tower = p.cfg.model.kind, p.cfg.model.video_tower
        return {
            "protocol": PROTOCOL,
            "mode": p.mode,
            "model": {"kind": kind, "video_tower": tower,
                      "text": "UMT5 states, zero-padded (Wan)" if tower == "wan" else "byte-level caption encoder",
                      "context_sources": ["atomic", *getattr(getattr(p.model, "context", None), "sources", ())],
                      "served_context": "atomic: the request's prompt"},
            "action_dim": p.action_dim,
            "state_dim": p.state_dim,
            "horizon": p.horizon,
            "fps": p.fps,
            "denoise_steps": p.denoise_steps,
            "views": list(self.spec.views),
            "image_size": list(self.spec.image_size),
            "checkpoint": self.checkpoint,
            "checkpoint_step": self.step,
            "normalization": {"action_mean": as_list(norm.action_mean), "action_std": as_list(norm.action_std),
                              "state_mean": as_list(norm.state_mean), "state_std": as_list(norm.state_std),
                              "applied": "on the server: send state and receive actions in robot units"},
            "observation": self.spec.describe(),
            "reply": reply,
            "server": server,
        }

    def run_batch(self, items: list[tuple[Observation, torch.Generator]]) -> list[dict[str, Any]]:
        """One forward pass for all items; each item's noise comes from its own generator."""
        obs = [o for o, _ in items]
        with self.lock:
            plans = self.policy.plan_batch([o.frame for o in obs], [o.state for o in obs], [o.prompt for o in obs],
                                           [g for _, g in items])
        replies = []
        for plan in plans:
            reply: dict[str, Any] = {"actions": plan.actions}
            if self.planner.reports_remaining:
                reply["remaining_steps"] = plan.remaining
            replies.append(reply)
        return replies
