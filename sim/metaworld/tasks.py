"""Supported Meta-World tasks: the expert's phases as L1 primitives, L2 subtasks, caption nouns.

Each scripted expert in ``metaworld.policies`` picks its target with an if/elif chain over
the observation (above the object -> down to it -> close the gripper -> to the goal ...).
The ``phase`` function of each task below repeats that chain, with the expert's own
thresholds, and names the branch that fires; consecutive steps in one branch form an L1
event. Repeating the conditions (rather than tracing the policy's code at run time) keeps the
mapping explicit and testable; the price is that a Meta-World release that changes an expert
needs the matching change here, which the tests catch: each expert must show every phase,
first appearances in the spec's order, and end a successful episode in the last phase. A
phase may also use the expert's own action (pick-place's grasp begins when the expert starts
closing the gripper).

This module holds the first eight tasks and ``SPECS``, the registry of all of them;
``tasks_extra.py`` holds the others (wall variants, windows, plates, coffee machine, handle
press) and names the experts left out and why. All tasks share one primitive vocabulary
(reach, descend, grasp, transport, push, pull, press), so a task held out of training meets
no primitive the training tasks lack.

Adding a task: one ``TaskSpec`` with the expert's branch conditions, primitive and subtask
templates, and the nouns its captions use; its name goes into ``TASK_NAMES`` of
``data_tools/commands/record_metaworld.py`` too (a test holds the two lists equal).
"""

from __future__ import annotations

import numpy as np

from .env import GRIPPER, HAND, OBJ1
from .tasks_extra import EXTRA_SPECS
from .taskspec import GOAL_NOUNS, Phase, TaskSpec, xy_dist as _xy

__all__ = ["SPECS", "Phase", "TaskSpec", "get_spec"]


# --- phase functions: each mirrors the if/elif chain of Sawyer<Task>V3Policy ---------------

def _pick_place(obs, act):
    hand, puck = obs[HAND], obs[OBJ1] + np.array([-0.005, 0.0, 0.0])
    if _xy(hand, puck) > 0.02:
        return "reach"
    if abs(hand[2] - puck[2]) > 0.05 and puck[2] < 0.04:
        # Descending; the expert starts closing the gripper near the puck, which begins the grasp.
        return "grasp" if act[3] > 0 else "descend"
    if obs[GRIPPER] > 0.73:
        return "grasp"
    return "transport"


def _push(obs, act):
    hand, puck = obs[HAND], obs[OBJ1] + np.array([-0.005, 0.0, 0.0])
    if _xy(hand, puck) > 0.02:
        return "reach"
    if abs(hand[2] - puck[2]) > 0.04:
        return "descend"
    return "push"


def _reach(obs, act):
    return "reach"


def _drawer_open(obs, act):
    hand, handle = obs[HAND], obs[OBJ1] + np.array([0.0, 0.0, -0.02])
    if _xy(hand, handle) > 0.06:
        return "reach"
    if abs(hand[2] - handle[2]) > 0.04:
        return "descend"
    return "pull"


def _drawer_close(obs, act):
    hand, handle = obs[HAND], obs[OBJ1] + np.array([0.0, 0.0, -0.02])
    if hand[1] > handle[1]:
        return "reach"  # rise, then move in front of the handle, staying high
    if abs(hand[2] - handle[2]) > 0.04:
        return "descend"
    return "push"


def _button_topdown(obs, act):
    return "reach" if _xy(obs[HAND], obs[OBJ1]) > 0.04 else "press"


def _button_side(obs, act):
    hand, button = obs[HAND], obs[OBJ1] + np.array([0.0, 0.0, -0.07])
    aligned = np.allclose(hand[[0, 2]], button[[0, 2]], atol=0.02, rtol=0.0)
    return "press" if aligned else "reach"


def _door_open(obs, act):
    hand, handle = obs[HAND], obs[OBJ1] - np.array([0.05, 0.0, 0.0])
    if _xy(hand, handle) > 0.12:
        return "reach"
    if abs(hand[2] - handle[2]) > 0.04:
        return "descend"
    return "pull"


_GOAL = GOAL_NOUNS

SPECS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec(
        "pick-place-v3", _pick_place,
        primitives={
            "reach": ("reach for the {obj}", "move the gripper above the {obj}",
                      "approach the {obj}"),
            "descend": ("lower the gripper to the {obj}", "move down to the {obj}",
                        "bring the open gripper down around the {obj}"),
            "grasp": ("grasp the {obj}", "close the gripper on the {obj}", "grip the {obj}"),
            "transport": ("move the {obj} to the {goal}", "carry the {obj} to the {goal}",
                          "lift the {obj} and bring it to the {goal}"),
        },
        subtasks=((("pick up the {obj}", "grab the {obj}", "take hold of the {obj}"),
                   ("reach", "descend", "grasp")),
                  (("place the {obj} at the {goal}", "bring it to the {goal}",
                    "put it at the {goal}"), ("transport",))),
        task=("pick up the {obj} and place it at the {goal}",
              "pick and place the {obj} at the {goal}", "move the {obj} to the {goal}",
              "put the {obj} at the {goal}"),
        nouns={"obj": ("puck", "red puck", "disc"), "goal": _GOAL}),
    TaskSpec(
        "push-v3", _push,
        primitives={
            "reach": ("reach for the {obj}", "move the gripper above the {obj}",
                      "approach the {obj}"),
            "descend": ("lower the gripper to the {obj}", "move down to the {obj}",
                        "bring the gripper down to the {obj}"),
            "push": ("push the {obj} to the {goal}", "slide the {obj} to the {goal}",
                     "shove the {obj} over to the {goal}"),
        },
        subtasks=((("get to the {obj}", "go to the {obj}"), ("reach", "descend")),
                  (("push the {obj} to the {goal}", "slide it to the {goal}"), ("push",))),
        task=("push the {obj} to the {goal}", "slide the {obj} across the table to the {goal}",
              "move the {obj} to the {goal} by pushing it"),
        nouns={"obj": ("puck", "red puck", "disc"), "goal": _GOAL}),
    TaskSpec(
        "reach-v3", _reach,
        primitives={"reach": ("reach the {goal}", "move the gripper to the {goal}",
                              "bring the hand to the {goal}")},
        subtasks=((("reach the {goal}", "go to the {goal}"), ("reach",)),),
        task=("reach the {goal}", "move the gripper to the {goal}", "touch the {goal} point"),
        nouns={"goal": _GOAL}),
    TaskSpec(
        "drawer-open-v3", _drawer_open,
        primitives={
            "reach": ("move the gripper above the {handle}", "reach toward the {handle}",
                      "go above the {handle}"),
            "descend": ("lower the gripper to the {handle}", "move down to the {handle}",
                        "bring the gripper down to the {handle}"),
            "pull": ("pull the {drawer} open", "pull the {handle} back",
                     "slide the {drawer} out"),
        },
        subtasks=((("reach the {handle}", "get to the {handle}"), ("reach", "descend")),
                  (("pull the {drawer} open", "open the {drawer}"), ("pull",))),
        task=("open the {drawer}", "pull the {drawer} open", "pull out the {drawer}"),
        nouns={"drawer": ("drawer", "green drawer"),
               "handle": ("drawer handle", "handle of the drawer")}),
    TaskSpec(
        "drawer-close-v3", _drawer_close,
        primitives={
            "reach": ("move the gripper up and in front of the {handle}",
                      "reach over to the front of the {drawer}",
                      "raise the gripper and go in front of the {handle}"),
            "descend": ("lower the gripper in front of the {handle}",
                        "move down to the {handle}", "bring the gripper down to the {handle}"),
            "push": ("push the {drawer} closed", "push the {handle} in", "slide the {drawer} shut"),
        },
        subtasks=((("get in front of the {handle}", "reach the {handle}"), ("reach", "descend")),
                  (("push the {drawer} closed", "close the {drawer}"), ("push",))),
        task=("close the {drawer}", "push the {drawer} closed", "shut the {drawer}"),
        nouns={"drawer": ("drawer", "green drawer"),
               "handle": ("drawer handle", "handle of the drawer")}),
    TaskSpec(
        "button-press-topdown-v3", _button_topdown,
        primitives={
            "reach": ("move the gripper above the {button}", "reach over the {button}",
                      "go to the {button}"),
            "press": ("press the {button} down", "push down on the {button}",
                      "press the {button}"),
        },
        subtasks=((("get above the {button}", "reach the {button}"), ("reach",)),
                  (("press the {button} down", "push the {button} down"), ("press",))),
        task=("press the {button} from above", "push the {button} down from the top",
              "press down the {button}"),
        nouns={"button": ("button", "red button")}),
    TaskSpec(
        "button-press-v3", _button_side,
        primitives={
            "reach": ("line the gripper up with the {button}", "move in front of the {button}",
                      "align the gripper with the {button}"),
            "press": ("push the {button} in", "press the {button}", "press the {button} forward"),
        },
        subtasks=((("get in front of the {button}", "line up with the {button}"), ("reach",)),
                  (("press the {button}", "push the {button} in"), ("press",))),
        task=("press the {button}", "push the {button} in", "press the {button} from the front"),
        nouns={"button": ("button", "red button")}),
    TaskSpec(
        "door-open-v3", _door_open,
        primitives={
            "reach": ("move the gripper above the {handle}", "reach toward the {handle}",
                      "go above the {handle}"),
            "descend": ("lower the gripper beside the {handle}", "move down to the {handle}",
                        "bring the gripper down to the {handle}"),
            "pull": ("pull the {door} open", "swing the {door} open", "pull the {handle}"),
        },
        subtasks=((("reach the {handle}", "get to the {handle}"), ("reach", "descend")),
                  (("pull the {door} open", "open the {door}"), ("pull",))),
        task=("open the {door}", "pull the {door} open", "swing the {door} open"),
        nouns={"door": ("door",), "handle": ("door handle", "handle of the door")}),
    *EXTRA_SPECS,
)}


def get_spec(task: str) -> TaskSpec:
    if task not in SPECS:
        raise KeyError(f"task {task!r} is not supported (supported: {', '.join(SPECS)})")
    return SPECS[task]
