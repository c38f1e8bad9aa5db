"""Closed-loop episodes of any gymnasium-style environment through a policy server.

``env.reset(seed=...)`` / ``env.step(action)`` with the 5-tuple of gymnasium >= 0.26; the
observation may be a dict or an array (seen by the adapter as key ``obs``), and when the env was
made with ``render_mode="rgb_array"`` its ``env.render()`` image is key ``render``. An
:class:`EnvAdapter` turns that into the server's request and the server's actions back into the
env's. Event mode walks ``prompts`` (the task's events, in order) and executes as many steps as
the remaining-time estimate says, moving on when the event ends within the plan; chunk mode
sends ``prompts[0]`` (the instruction) and executes whole chunks. What this loop gives up
against the Meta-World runner: no frame strips and no task-specific event script.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wallwm_pretrain.eval.adapter import EnvAdapter


@dataclass
class GymEpisode:
    seed: int
    steps: int = 0
    requests: int = 0
    success: bool = False
    reward: float = 0.0
    ended: bool = False  # terminated or truncated by the env


def env_observation(env, obs) -> dict:
    out = dict(obs) if isinstance(obs, dict) else {"obs": obs}
    if getattr(env, "render_mode", None) == "rgb_array":
        out["render"] = np.ascontiguousarray(env.render())
    return out


def run_episode(env, adapter: EnvAdapter, client, prompts: list[str], seed: int, max_steps: int) -> GymEpisode:
    """One episode; ``client`` is a :class:`~wallwm_pretrain.client.PolicyClient` (or anything
    with its ``infer`` and ``metadata``)."""
    if not prompts:
        raise ValueError("prompts: give at least one (the instruction, or the events in order)")
    meta = client.metadata
    event_mode = "remaining_steps" in meta["reply"]  # a server that returns the event's remaining time plans events
    obs, _ = env.reset(seed=seed)
    ep, event = GymEpisode(seed), 0
    while ep.steps < max_steps and not (ep.success or ep.ended):
        request = adapter.request(env_observation(env, obs), prompts[event] if event_mode else prompts[0])
        if ep.requests == 0:
            request["seed"] = seed  # the episode's noise stream, as in-process evaluation seeds it
        reply = client.infer(request)
        ep.requests += 1
        actions = reply["actions"]
        n = len(actions)
        if event_mode:
            remaining = float(reply["remaining_steps"])
            n = int(np.clip(round(remaining), 1, len(actions)))
            if remaining <= len(actions):
                event = min(event + 1, len(prompts) - 1)
        for action in actions[:n]:
            obs, reward, terminated, truncated, info = env.step(adapter.action(action))
            ep.steps += 1
            ep.reward += float(reward)
            ep.success = bool(info.get("success", 0.0) >= 1.0)
            ep.ended = bool(terminated or truncated)
            if ep.success or ep.ended or ep.steps >= max_steps:
                break
    return ep
