"""Chunks: chunk mode (the baseline), every plan conditioned on the task instruction.

Each plan covers ``data.chunk_horizon`` steps and all of them run; the remaining-time head
decides nothing. Through the policy server the prompt is the task instruction.
"""

from __future__ import annotations

from wallwm_pretrain.eval.planners.base import Decision, Planner, Scene


class Chunks(Planner):
    modes = ("chunk",)
    ways = ("chunk",)
    prompt = "the task instruction, e.g. 'pick up the puck and place it at the goal'"

    def next(self, scene: Scene) -> Decision:
        plan = self.policy.plan(scene.frame, scene.state, self.task.instruction, self.generator)
        return Decision(plan.actions, "chunk", self.task.instruction, len(plan.actions), plan.remaining)
