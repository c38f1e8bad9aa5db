"""Closed-loop episodes of a checkpoint policy in Meta-World.

Observations are made exactly as the recorder made the training data (``sim.metaworld``:
same cameras, upright, same render size, then the same area resize as ``build-shards``), so the
policy sees what it was trained on, up to the video codec's artefacts, which recorded frames
went through and live renders do not.

Event mode walks the task's event script, the expert's phases in order with their first
caption template (``reach for the puck``, ``lower the gripper to the puck``, ...). For each
event it plans ``data.max_frames`` steps and executes as many as the remaining-time head
predicts (at least one, at most the plan); when the head says the event continues past the
plan it plans the same event again (at most ``max_plans_per_event`` times), otherwise it moves
to the next event. After the last event it keeps re-planning the last one until the task
succeeds or the step budget is spent. Chunk mode plans ``data.chunk_horizon`` steps from the
task instruction and executes all of them, over and over.

Unified mode plans ``data.chunk_horizon`` steps from the observation and the frames of the
``data.history_latents`` latent frames before it (the episode's first frame repeated before its
start, as in training), executes the whole chunk, and conditions each chunk on the text context
``context`` names: ``atomic`` the caption of the scripted event in progress, ``global`` the task
instruction through the conditioner's heads, ``staircase`` the Staircase latents of the task; the
last two see the captions of the scripted events done so far, as their training prompts did. The
script advances as in event mode, when the remaining-time head says the event in progress ends
within the chunk (or after ``max_plans_per_event`` chunks).

With a conditioner (``--events predicted``) event mode plans without the script: before each
plan the conditioner looks at the cameras, the task instruction and the events done so far and
names the next event and the steps it has left; the plan executes that many steps (at least one,
at most the plan), and the event counts as done when it ends within the plan. Each predicted
caption and remaining time is kept per plan (:attr:`Episode.predicted`).

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
from wallwm_pretrain.eval.conditioner import ConditionerPlanner
from wallwm_pretrain.eval.policy import CheckpointPolicy, ChunkContext, PolicyError

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
    predicted: list[dict] = field(default_factory=list)  # --events predicted: step, caption, remaining per plan
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
        max_plans_per_event: event mode: plans of one event before moving on regardless.
        adapter: maps this runner's observation dict (``camera/<name>``: uint8 [R, R, 3] for each
            camera the adapter names, ``state/full``: the 39-D observation, ``state/proprio``:
            hand, gripper, hand velocity) to the model's views and state, and model actions to
            Meta-World's; default: the views' cameras, the state layout of the model's width,
            actions clipped to [-1, 1] (``configs/adapters/metaworld.yaml`` spelled out).
    """

    def __init__(self, policy: CheckpointPolicy | RemotePolicy, task: str, max_steps: int = 200, render_size: int = 64,
                 strip_every: int = 10, max_plans_per_event: int = 4, adapter: EnvAdapter | None = None,
                 planner: ConditionerPlanner | None = None, context: str = "atomic") -> None:
        self.policy, self.spec, self.planner, self.context = policy, get_spec(task), planner, context
        if policy.mode == "unified" and context not in ("atomic", "global", "staircase"):
            raise PolicyError(f"unified mode: context must be atomic, global or staircase, got {context!r}")
        if planner is not None:
            if policy.mode != "event":
                raise PolicyError("--events predicted plans events: it needs an event-mode checkpoint")
            if planner.views and policy.views and planner.views != policy.views:
                raise PolicyError(f"the conditioner was trained on views {planner.views}, the policy on {policy.views}")
        self.max_steps, self.strip_every, self.max_plans_per_event = max_steps, strip_every, max_plans_per_event
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
        gen = self.policy.new_episode(env_seed)  # the episode's sampling-noise stream
        script = event_script(self.spec)
        ep = Episode(self.spec.name, index, env_seed, False, 0, 0)
        event, plans_in_event = 0, 0
        t = 0
        done: list[str] = []  # --events predicted: captions of the events finished so far
        unified = self.policy.mode == "unified"
        seen: list[np.ndarray] = []  # unified mode: the model-size frame of every step so far
        while t < self.max_steps and not ep.success:
            raw, frame = self.observe()
            if unified:
                seen.append(frame)
                history = [seen[max(0, t - d)] for d in self.policy.history_steps()]
                label, caption = script[event]
                context = ChunkContext(self.context, caption, task_instruction(self.spec),
                                       [c for _, c in script[:event]])
                plan = self.policy.plan_chunk(history, frame, self.to_state(obs), context, gen)
                ep.plans += 1
                ep.events.append(caption if self.context == "atomic" else f"{self.context}: {caption}")
                plans_in_event += 1
                if plan.remaining <= len(plan.actions) or plans_in_event >= self.max_plans_per_event:
                    event, plans_in_event = min(event + 1, len(script) - 1), 0
                t, obs = self._execute(ep, plan.actions, t, raw, label, obs, seen)
                continue
            if self.planner is not None:
                pred = self.planner.next_event(resize_area(raw, self.planner.image_size), self.to_state(obs),
                                               task_instruction(self.spec), done)
                label, caption = "predicted", pred.caption
                ep.predicted.append({"step": t, "caption": pred.caption, "remaining": pred.remaining_steps})
            else:
                label, caption = script[event] if self.policy.mode == "event" else ("chunk", task_instruction(self.spec))
            plan = self.policy.plan(frame, self.to_state(obs), caption, gen)
            ep.plans += 1
            ep.events.append(caption)
            if self.planner is not None:
                n = int(np.clip(round(pred.remaining_steps), 1, len(plan.actions)))
                if pred.remaining_steps <= len(plan.actions):
                    done.append(pred.caption)
            elif self.policy.mode == "event":
                n = int(np.clip(round(plan.remaining), 1, len(plan.actions)))
                plans_in_event += 1
                if plan.remaining <= len(plan.actions) or plans_in_event >= self.max_plans_per_event:
                    event, plans_in_event = min(event + 1, len(script) - 1), 0
            else:
                n = len(plan.actions)
            t, obs = self._execute(ep, plan.actions[:n], t, raw, label, obs)
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
