"""Unified chunks: unified mode, a chunk after history frames with a text-context source.

Each plan covers ``data.chunk_horizon`` steps from the observation and the frames of the
``data.history_latents`` latent frames before it (the episode's first frame repeated before
its start, as in training); the whole chunk runs. The way is the context source
(``--context``): ``atomic`` the caption of the scripted event in progress, ``global`` the task
instruction through the conditioner's heads, ``staircase`` the Staircase latents of the task;
the last two see the captions of the scripted events done so far. The script advances as in
scripted event mode (``script.py``). Runs in-process only: the server's requests carry no
history frames.
"""

from __future__ import annotations

from typing import Any

from wallwm_pretrain.config import CONTEXT_SOURCES
from wallwm_pretrain.eval.planners.base import Decision, EventScript, Planner, Policy, Scene, Task
from wallwm_pretrain.eval.policy import ChunkContext, PolicyError


class UnifiedChunks(Planner):
    modes = ("unified",)
    option = "context"
    ways = CONTEXT_SOURCES
    results_key = "contexts"
    served = False

    def __init__(self, policy: Policy, way: str | None = None, *, conditioner: Any = None,
                 max_plans_per_event: int = 4) -> None:
        super().__init__(policy, way, conditioner=conditioner, max_plans_per_event=max_plans_per_event)
        if self.way not in self.ways:
            raise PolicyError(f"unified mode: context must be {', '.join(self.ways[:-1])} or {self.ways[-1]}, "
                              f"got {self.way!r}")

    def history_steps(self) -> list[int] | None:
        return self.policy.history_steps()

    def start(self, task: Task, generator: Any) -> None:
        super().start(task, generator)
        self.events = EventScript(task.script, self.max_plans_per_event)

    def next(self, scene: Scene) -> Decision:
        label, caption = self.events.current
        context = ChunkContext(self.way, caption, self.task.instruction, self.events.done(self.task.done))
        plan = self.policy.plan_chunk(scene.history, scene.frame, scene.state, context, self.generator)
        self.events.advance(plan.remaining, len(plan.actions))
        shown = caption if self.way == "atomic" else f"{self.way}: {caption}"  # atomic: the caption itself
        return Decision(plan.actions, label, shown, len(plan.actions), plan.remaining)
