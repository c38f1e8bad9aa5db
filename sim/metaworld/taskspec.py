"""What the recorder and the evaluator know of one task: ``TaskSpec`` and the phase helpers.

``tasks.py`` and ``tasks_extra.py`` hold the specs themselves; both build on this module so
that neither imports the other's specs to get the dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Phase = Callable[[np.ndarray, np.ndarray], str]

# Caption names of the goal marker, shared by the tasks that move something to a goal.
GOAL_NOUNS = ("goal", "goal position", "target", "target position")


@dataclass(frozen=True)
class TaskSpec:
    name: str                                   # Meta-World environment, e.g. "pick-place-v3"
    phase: Phase                                # (observation, expert action) -> primitive
    primitives: dict[str, tuple[str, ...]]      # L1 primitive -> caption templates, in order
    subtasks: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...]  # (L2 templates, primitives)
    task: tuple[str, ...]                       # L3 templates
    nouns: dict[str, tuple[str, ...]]           # template slot -> names; one per episode

    def subtask_of(self, primitive: str) -> int:
        for i, (_, prims) in enumerate(self.subtasks):
            if primitive in prims:
                return i
        raise KeyError(f"{self.name}: primitive {primitive!r} belongs to no subtask")


def xy_dist(a: np.ndarray, b: np.ndarray) -> float:
    """Distance in the table plane, the experts' usual test for "above the object"."""
    return float(np.linalg.norm(a[:2] - b[:2]))
