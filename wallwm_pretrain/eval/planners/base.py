"""The planner interface: what to condition the next plan on, and how much of it to execute.

A closed loop (``eval/metaworld.py``), a one-shot inference (``infer.py``) and the policy server
(``serve/``) all hand a policy observations and execute its actions; what differs between the
ways of planning is the decision around each plan: which text conditions it (the scripted
event, the conditioner's predicted event, the task instruction, a unified chunk's context
source), whether history frames come before the observation, and how many of the planned steps
run before the next plan. A :class:`Planner` owns exactly that decision and the state it keeps
across the plans of an episode (the event in progress, the events done); the runner owns the
environment, the frames and the step budget, and never asks which mode a policy plans in.

The planner talks to the policy through :class:`Policy` (what :class:`~wallwm_pretrain.eval.policy.CheckpointPolicy`
and :class:`~wallwm_pretrain.eval.remote.RemotePolicy` provide), so a policy for another model
kind is one file implementing it, and a new way of planning is one file subclassing
:class:`Planner` plus its line in ``planners/__init__.py``.

Trade-off: the class attributes (:attr:`Planner.modes`, :attr:`Planner.option`, ...) describe a
planner to the command lines and the server without building one, which keeps their flag checks
before any model is loaded, at the price of a few declarative fields per planner.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np


class Policy(Protocol):
    """What planners call on a policy (in-process checkpoint, policy server, another model kind)."""

    mode: str
    horizon: int
    views: list[str]

    def plan(self, frame: np.ndarray, state: np.ndarray, caption: str, generator: Any) -> Any:
        """A plan (``actions`` [T, A] robot units, ``remaining`` steps) conditioned on ``caption``."""

    def plan_chunk(self, history: list[np.ndarray], frame: np.ndarray, state: np.ndarray, context: Any,
                   generator: Any) -> Any:
        """A unified chunk after ``history`` frames, conditioned on a text-context source."""

    def history_steps(self) -> list[int]:
        """Control steps before the observation of each history frame, oldest first."""


@dataclass
class Task:
    """What an episode is for: the task instruction, its event script ((label, caption) of each
    event, in order) and the captions of the events done before the first plan (a one-shot plan
    in the middle of an episode, ``infer.py``)."""

    instruction: str
    script: list[tuple[str, str]] = field(default_factory=list)
    done: list[str] = field(default_factory=list)


@dataclass
class Scene:
    """What the runner sees when a plan is due."""

    frame: np.ndarray  # uint8 [V, H, W, 3] at the policy's size
    raw: np.ndarray  # uint8 [V, R, R, 3] as rendered (a conditioner resizes it to its own size)
    state: np.ndarray  # float [S], robot units
    step: int  # control steps executed so far in the episode
    history: list[np.ndarray] = field(default_factory=list)  # frames at Planner.history_steps() before


@dataclass
class Decision:
    """One plan and what of it to execute now."""

    actions: np.ndarray  # float32 [n, A], robot units: the steps to execute before the next plan
    label: str  # what the frame strip shows for these steps
    caption: str  # what the plan was conditioned on (one entry of the episode's ``events``)
    planned: int  # steps the plan covered (>= len(actions))
    remaining: float  # the remaining-time estimate the decision used (control steps)
    predicted: dict | None = None  # a predicted event: step, caption, remaining


class Planner(ABC):
    """One way of planning; a fresh episode starts with :meth:`start`, each plan is :meth:`next`.

    Args (every planner takes the same, so the registry can build any):
        policy: what plans (:class:`Policy`).
        way: the value of :attr:`option` this planner answers (one of :attr:`ways`).
        conditioner: a :class:`~wallwm_pretrain.eval.conditioner.ConditionerPlanner`, for the
            planners that :attr:`needs_conditioner`.
        max_plans_per_event: plans of one scripted event before moving on regardless.
    """

    modes: ClassVar[tuple[str, ...]]
    """The modes a policy plans in (``policy.mode``, a ``data.mode``) this planner serves."""
    option: ClassVar[str] = ""
    """The command-line option (``--events``, ``--context``) whose values choose among a mode's
    ways of planning; "" when the mode plans one way only."""
    ways: ClassVar[tuple[str, ...]]
    """The values of :attr:`option` this planner answers (its single way when there is no option)."""
    results_key: ClassVar[str] = "events"
    """Where evaluation results hold each way's run (``events`` or ``contexts``)."""
    served: ClassVar[bool] = True
    """Runs through the policy server (whose requests carry one prompt per plan)."""
    needs_conditioner: ClassVar[bool] = False
    prompt: ClassVar[str] = ""
    """What the text of a plan is, as the server's metadata describes it."""
    reports_remaining: ClassVar[bool] = False
    """Its plans' remaining-time estimate decides something (the server returns it)."""

    def __init__(self, policy: Policy, way: str | None = None, *, conditioner: Any = None,
                 max_plans_per_event: int = 4) -> None:
        self.policy, self.way = policy, way or self.ways[0]
        self.conditioner, self.max_plans_per_event = conditioner, max_plans_per_event
        self.task = Task("")
        self.generator: Any = None

    @property
    def tag(self) -> str:
        """The way, as logs and strip titles say it (``script events``, ``global context``)."""
        return f"{self.way} {self.option}" if self.option else ""

    def history_steps(self) -> list[int] | None:
        """Control steps before the observation of each history frame the plans read, oldest
        first; None when they read none (the runner then keeps no frames)."""
        return None

    def start(self, task: Task, generator: Any) -> None:
        """A new episode: its task and its sampling-noise stream (``policy.new_episode``)."""
        self.task, self.generator = task, generator

    @abstractmethod
    def next(self, scene: Scene) -> Decision:
        """Plan from this scene and say how many of the planned steps to execute."""


class EventScript:
    """The scripted event in progress: advanced when the remaining-time head says it ends within
    the plan, or after ``max_plans`` plans of it; the last event repeats until the episode ends."""

    def __init__(self, script: list[tuple[str, str]], max_plans: int) -> None:
        self.script, self.max_plans = script, max_plans
        self.event, self.plans = 0, 0

    @property
    def current(self) -> tuple[str, str]:
        return self.script[self.event]

    def done(self, before: list[str]) -> list[str]:
        """Captions of the events finished: ``before`` the script, then the script's before the one
        in progress."""
        return list(before) + [c for _, c in self.script[: self.event]]

    def advance(self, remaining: float, planned: int) -> None:
        self.plans += 1
        if remaining <= planned or self.plans >= self.max_plans:
            self.event, self.plans = min(self.event + 1, len(self.script) - 1), 0


def steps_to_run(remaining: float, planned: int) -> int:
    """The remaining-time estimate, rounded, within [1, planned]."""
    return int(np.clip(round(remaining), 1, planned))
