"""Closed-loop episodes of a checkpoint policy in Meta-World.

Observations are made exactly as the recorder made the training data (``sim.metaworld``:
same cameras, upright, same render size, then the same area resize as ``build-shards``), so the
policy sees what it was trained on, up to the video codec's artefacts, which recorded frames
went through and live renders do not.

One loop runs every way of planning: at each plan it hands the planner (``eval/planners``) the
scene (the frame at the model's size, the render, the state and, when the planner reads history,
the frames it asks for) and executes the steps the planner decides. The planner owns which text
conditions the plan and how far it runs: the task's event script (``script.py``: the expert's
phases in order with their first caption template, ``reach for the puck``, ...), a conditioner's
predicted events (``predicted.py``), the task instruction in fixed chunks (``chunks.py``), or
unified chunks after history frames with a text-context source (``unified.py``). When the planner
reads history the runner keeps the model-size frame of every step (the episode's first frame
stands for the steps before its start, as in training).

Episode layouts come from ``SeedSequence([seed, crc32(task), index, 1])``: a different stream
from the recorder's ``[seed, crc32(task), index]``, so evaluation layouts are fresh.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sim.imageops import resize_area
from sim.metaworld.env import STATE_KINDS, TaskEnv
from sim.metaworld.render import CameraRig
from sim.metaworld.tasks import TaskSpec, get_spec
from wallwm_pretrain.eval.adapter import EnvAdapter, StatePart
from wallwm_pretrain.eval.planners import Planner, Scene, Task, planner_for
from wallwm_pretrain.eval.policy import CheckpointPolicy, PolicyError

if TYPE_CHECKING:
    from wallwm_pretrain.eval.remote import RemotePolicy

STATE_KIND_BY_DIM = {len(names): kind for kind, (names, _) in STATE_KINDS.items()}


def _names(spec: TaskSpec) -> dict[str, str]:
    return {slot: options[0] for slot, options in spec.nouns.items()}


def event_script(spec: TaskSpec) -> list[tuple[str, str]]:
    """(primitive, caption) of each event of the task, in the expert's order."""
    names = _names(spec)
    return [(prim, templates[0].format(**names)) for prim, templates in spec.primitives.items()]


def task_instruction(spec: TaskSpec) -> str:
    return spec.task[0].format(**_names(spec))


def eval_env_seed(seed: int, task: str, index: int) -> int:
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode()), index, 1]).generate_state(1)[0])


@dataclass
class Episode:
    task: str
    index: int
    env_seed: int
    success: bool
    steps: int
    plans: int
    events: list[str] = field(default_factory=list)  # caption of each plan, in order
    predicted: list[dict] = field(default_factory=list)  # predicted events: step, caption, remaining per plan
    strip: list[tuple[int, str, np.ndarray]] = field(default_factory=list)  # (step, label, frame)


class MetaWorldRunner:
    """Runs episodes of one task with one policy.

    Args:
        policy: the checkpoint policy, in-process or behind a policy server (same interface).
        task: a supported Meta-World task (``sim.metaworld.tasks``).
        max_steps: step budget of an episode.
        render_size: camera resolution before the resize to the model's size (the recorder's
            ``--image-size``).
        strip_every: keep the first view every this many steps for the frame strip.
        max_plans_per_event: plans of one scripted event before moving on regardless (the
            default planner's; a given ``planner`` has its own).
        adapter: maps this runner's observation dict (``camera/<name>``: uint8 [R, R, 3] for each
            camera the adapter names, ``state/full``: the 39-D observation, ``state/proprio``:
            hand, gripper, hand velocity) to the model's views and state, and model actions to
            Meta-World's; default: the views' cameras, the state layout of the model's width,
            actions clipped to [-1, 1] (``configs/adapters/metaworld.yaml`` spelled out).
        planner: how each plan is conditioned and how far it runs (``eval/planners``); default:
            the first way of the mode the policy plans in (scripted events, chunks, atomic
            unified chunks).
    """

    def __init__(self, policy: CheckpointPolicy | RemotePolicy, task: str, max_steps: int = 200, render_size: int = 64,
                 strip_every: int = 10, max_plans_per_event: int = 4, adapter: EnvAdapter | None = None,
                 planner: Planner | None = None) -> None:
        self.policy, self.spec = policy, get_spec(task)
        self.planner = planner or planner_for(policy, max_plans_per_event=max_plans_per_event)
        self.max_steps, self.strip_every = max_steps, strip_every
        state_dim = policy.state_dim
        if state_dim not in STATE_KIND_BY_DIM:
            raise PolicyError(
                f"the model's state_dim is {state_dim}; Meta-World states are "
                + ", ".join(f"{kind} ({len(names)})" for kind, (names, _) in STATE_KINDS.items())
            )
        kind = STATE_KIND_BY_DIM[state_dim]
        views = policy.views or ["corner", "gripperPOV"]
        if len(views) != policy.num_views:
            raise PolicyError(f"the statistics name views {views} but the model has {policy.num_views}")
        self.views = [v.rsplit(".", 1)[-1] for v in views]
        self.adapter = adapter or EnvAdapter(
            {v: f"camera/{v}" for v in self.views}, [StatePart(f"state/{kind}")], action_low=-1.0, action_high=1.0,
            source=f"default Meta-World adapter ({kind} state)")
        zeros = {k: np.zeros(len(names)) for k, (names, _) in STATE_KINDS.items()}
        self.adapter.check(self.views, state_dim, {"state": zeros})  # fails before the env is built
        keys = [self.adapter.images[v] for v in self.views]
        if not all(k.startswith("camera/") for k in keys):
            raise PolicyError(f"{self.adapter.source}: Meta-World images are 'camera/<name>' keys, "
                              f"got {self.adapter.images}")
        cameras = list(dict.fromkeys(k.split("/", 1)[1] for k in keys))
        self.env = TaskEnv(task, max_steps)
        self.env.reset(0)
        self.rig = CameraRig(self.env.model, self.env.data, cameras, render_size)

    def observe(self) -> tuple[np.ndarray, np.ndarray]:
        """(frame at the render size [V, R, R, 3], frame at the model's size [V, H, W, 3])."""
        images = self.adapter.images_of({"camera": self.rig.render(self.env.data)})
        raw = np.stack([images[v] for v in self.views])
        return raw, resize_area(raw, self.policy.image_size)

    def to_state(self, obs: np.ndarray) -> np.ndarray:
        """The model's state from Meta-World's observation vector, through the adapter."""
        return self.adapter.state_of({"state": {kind: fn(obs) for kind, (_, fn) in STATE_KINDS.items()}})

    def run(self, index: int, seed: int) -> Episode:
        env_seed = eval_env_seed(seed, self.spec.name, index)
        obs = self.env.reset(env_seed)
        # the episode's sampling-noise stream, and the planner's fresh start on this task
        self.planner.start(Task(task_instruction(self.spec), event_script(self.spec)), self.policy.new_episode(env_seed))
        back = self.planner.history_steps()
        seen: list[np.ndarray] | None = None if back is None else []  # the model-size frame of every step so far
        ep = Episode(self.spec.name, index, env_seed, False, 0, 0)
        t = 0
        while t < self.max_steps and not ep.success:
            raw, frame = self.observe()
            if seen is not None:
                seen.append(frame)
            history = [seen[max(0, t - d)] for d in back] if seen is not None else []
            decision = self.planner.next(Scene(frame, raw, self.to_state(obs), t, history))
            ep.plans += 1
            ep.events.append(decision.caption)
            if decision.predicted is not None:
                ep.predicted.append(decision.predicted)
            t, obs = self._execute(ep, decision.actions, t, raw, decision.label, obs, seen)
        ep.steps = t
        final, _ = self.observe()
        ep.strip.append((t, "success" if ep.success else "end", final[0]))
        return ep

    def _execute(self, ep: Episode, actions: np.ndarray, t: int, raw, label: str, obs: np.ndarray,
                 seen: list[np.ndarray] | None = None) -> tuple[int, np.ndarray]:
        """Step the env through ``actions`` (until success or the budget): the step count and the
        last observation. Frames for the strip every ``strip_every`` steps and, with ``seen``,
        the model-size frame of every step (``raw``: the render of the current step, if made)."""
        for i, action in enumerate(actions):
            if i and seen is not None:
                raw, frame = self.observe()
                seen.append(frame)
            if t % self.strip_every == 0:
                if raw is None:
                    raw, _ = self.observe()
                ep.strip.append((t, label, raw[0]))
            raw = None
            obs, info = self.env.step(self.adapter.action(action))
            t += 1
            if info.get("success", 0.0) >= 1.0:
                ep.success = True
                break
            if t >= self.max_steps:
                break
        return t, obs

    def close(self) -> None:
        self.rig.close()
        self.env.close()
