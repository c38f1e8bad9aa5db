"""Predicted events: event mode without a script; a text conditioner names each next event.

Before each plan the conditioner (``eval/conditioner.py``) looks at the cameras (at its own
image size), the task instruction and the events done so far, and predicts the next event's
caption and the steps it has left; the policy plans that caption (a policy that
``reads_text_states``, the Wan towers', plans the conditioner's aligned states of it instead of
the text encoder's) and that many steps run (at least one, at most the plan). The event counts as done when it ends within the plan. Each
prediction is kept on the decision (``Episode.predicted``).
"""

from __future__ import annotations

from typing import Any

from sim.imageops import resize_area
from wallwm_pretrain.eval.planners.base import Decision, Planner, Policy, Scene, Task, steps_to_run
from wallwm_pretrain.eval.policy import PolicyError


class PredictedEvents(Planner):
    modes = ("event",)
    option = "events"
    ways = ("predicted",)
    needs_conditioner = True
    prompt = "the next event's description, e.g. 'reach for the puck'"
    reports_remaining = True

    def __init__(self, policy: Policy, way: str | None = None, *, conditioner: Any = None,
                 max_plans_per_event: int = 4) -> None:
        super().__init__(policy, way, conditioner=conditioner, max_plans_per_event=max_plans_per_event)
        if conditioner is None:
            raise PolicyError("--events predicted needs --conditioner CKPT (a model.kind=conditioner checkpoint)")
        views = list(policy.views or [])
        if conditioner.views and views and conditioner.views != views:
            raise PolicyError(f"the conditioner was trained on views {conditioner.views}, the policy on {views}")

    def start(self, task: Task, generator: Any) -> None:
        super().start(task, generator)
        self.done: list[str] = list(task.done)
        self.last = None  # the conditioner's latest Prediction (caption, remaining, text states)

    def next(self, scene: Scene) -> Decision:
        pred = self.conditioner.next_event(resize_area(scene.raw, self.conditioner.image_size), scene.state,
                                           self.task.instruction, self.done)
        self.last = pred
        if getattr(self.policy, "reads_text_states", False):
            # the Wan towers read the conditioner's aligned states in place of UMT5's (the project-out)
            plan = self.policy.plan_states(scene.frame, scene.state, pred.text_states, self.generator)
        else:
            plan = self.policy.plan(scene.frame, scene.state, pred.caption, self.generator)
        n = steps_to_run(pred.remaining_steps, len(plan.actions))
        if pred.remaining_steps <= len(plan.actions):
            self.done.append(pred.caption)
        record = {"step": scene.step, "caption": pred.caption, "remaining": pred.remaining_steps}
        return Decision(plan.actions[:n], "predicted", pred.caption, len(plan.actions), pred.remaining_steps, record)
