"""Inference planners, by the mode a policy plans in and the way asked for.

``PLANNERS`` lists every planner; :func:`planners_of` gives a mode's, :func:`choose` turns the
command line's ``--events`` / ``--context`` into the planner classes to run, side by side,
refusing an option the mode does not read, and :func:`planner_for` builds the mode's first (its
default) way. Evaluation, inference and the policy server ask these instead of comparing mode
strings; a new planner is a file beside these and its entry in ``PLANNERS``.
"""

from __future__ import annotations

from typing import Any

from wallwm_pretrain.eval.planners.base import Decision, Planner, Policy, Scene, Task
from wallwm_pretrain.eval.planners.chunks import Chunks
from wallwm_pretrain.eval.planners.predicted import PredictedEvents
from wallwm_pretrain.eval.planners.script import ScriptedEvents
from wallwm_pretrain.eval.planners.unified import UnifiedChunks
from wallwm_pretrain.eval.policy import PolicyError

__all__ = ["PLANNERS", "Chunks", "Decision", "Planner", "Policy", "PredictedEvents", "Scene", "ScriptedEvents",
           "Task", "UnifiedChunks", "choose", "planner_for", "planners_of", "served_modes"]

PLANNERS: tuple[type[Planner], ...] = (ScriptedEvents, PredictedEvents, Chunks, UnifiedChunks)


def planners_of(mode: str) -> list[type[Planner]]:
    """The planners of a mode, its default first; PolicyError when it plans nothing."""
    found = [p for p in PLANNERS if mode in p.modes]
    if not found:
        planning = sorted({m for p in PLANNERS for m in p.modes})
        raise PolicyError(f"{mode}-mode checkpoints do not plan actions (the planners serve {', '.join(planning)} mode)")
    return found


def served_modes() -> list[str]:
    """Modes whose every planner runs through the policy server."""
    modes = dict.fromkeys(m for p in PLANNERS for m in p.modes)
    return [m for m in modes if all(p.served for p in planners_of(m))]


def choose(mode: str, asked: dict[str, list[str]], defaults: dict[str, list[str]]) -> list[tuple[str, type[Planner]]]:
    """(way, planner class) of each way ``asked`` of the option mode ``mode`` reads, in the order
    asked (the mode's single way when it reads none). ValueError when an option the mode does not
    read departs from its default, or a way is not the mode's."""
    family = planners_of(mode)
    option = family[0].option
    for name, values in asked.items():
        if name != option and list(values) != list(defaults.get(name, [])):
            readers = list(dict.fromkeys(m for p in PLANNERS if p.option == name for m in p.modes))
            takes = f"--{option}" if option else "neither"
            raise ValueError(f"--{name} is read in {' and '.join(readers)} mode; this policy plans in {mode} mode "
                             f"(--mode), which takes {takes}")
    if not option:
        return [(family[0].ways[0], family[0])]
    by_way = {w: p for p in family for w in p.ways}
    out = []
    for way in dict.fromkeys(asked.get(option, [])):
        if way not in by_way:
            raise ValueError(f"--{option} {way}: {mode} mode plans with {', '.join(by_way)}")
        out.append((way, by_way[way]))
    return out


def planner_for(policy: Policy, way: str | None = None, **kw: Any) -> Planner:
    """A planner of the policy's mode: ``way`` of its option, or the mode's default."""
    family = planners_of(policy.mode)
    cls = next((p for p in family if way in p.ways), family[0]) if way else family[0]
    return cls(policy, way, **kw)
