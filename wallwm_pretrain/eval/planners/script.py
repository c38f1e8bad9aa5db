"""Scripted events: event mode, the task's event script gives each plan's caption.

Each plan covers ``data.max_frames`` steps of the event in progress; as many run as the
remaining-time head predicts (at least one, at most the plan). The event advances when the
head says it ends within the plan, or after ``max_plans_per_event`` plans; after the last
event the last one is planned again until the episode ends. Through the policy server the
client holds the script and sends each event's caption as the prompt.
"""

from __future__ import annotations

from typing import Any

from wallwm_pretrain.eval.planners.base import Decision, EventScript, Planner, Scene, Task, steps_to_run


class ScriptedEvents(Planner):
    modes = ("event",)
    option = "events"
    ways = ("script",)
    prompt = "the next event's description, e.g. 'reach for the puck'"
    reports_remaining = True

    def start(self, task: Task, generator: Any) -> None:
        super().start(task, generator)
        self.events = EventScript(task.script, self.max_plans_per_event)

    def next(self, scene: Scene) -> Decision:
        label, caption = self.events.current
        plan = self.policy.plan(scene.frame, scene.state, caption, self.generator)
        self.events.advance(plan.remaining, len(plan.actions))
        n = steps_to_run(plan.remaining, len(plan.actions))
        return Decision(plan.actions[:n], label, caption, len(plan.actions), plan.remaining)
