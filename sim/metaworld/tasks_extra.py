"""Meta-World tasks beyond the first eight: wall variants, windows, plates, coffee machine, handle.

Same rules as ``tasks.py``: each ``phase`` repeats the if/elif chain of
``Sawyer<Task>V3Policy._desired_pos`` with the expert's own offsets and thresholds, and names
the branch that fires. They reuse the primitives of the first eight tasks (reach, descend,
grasp, transport, push, press), so a task held out of training meets no new primitive.

Experts left out, because their phases cannot become clean events (measured on 10 episodes
each): door-close, handle-pull and handle-pull-side alternate between two branches every 5-8
steps while they work (pushing or pulling takes the hand out of the expert's height band, which
sends it back to the lowering branch); handle-press-side, faucet-open/close and
plate-slide-back fall back to their approach branch once the object has moved, so successful
episodes end in "reach"; lever-pull succeeds while still alternating between its approach
branches; sweep-into failed 1 of 10 and ends some successful episodes back in its descend
branch; push-back needs more than 200 steps in 3 of 10.
"""

from __future__ import annotations

import numpy as np

from .env import HAND, OBJ1
from .taskspec import GOAL_NOUNS, TaskSpec, xy_dist


# --- phase functions: each mirrors the if/elif chain of Sawyer<Task>V3Policy ---------------

def _window(dx: float):
    """Window open (dx=-0.03) / close (dx=+0.03): above the handle's side, down, slide."""
    def phase(obs, act):
        hand, handle = obs[HAND], obs[OBJ1] + np.array([dx, -0.03, -0.08])
        if xy_dist(hand, handle) > 0.04:
            return "reach"
        if abs(hand[2] - handle[2]) > 0.02:
            return "descend"
        return "push"
    return phase


def _button_wall(obs, act):
    hand, button = obs[HAND], obs[OBJ1] + np.array([0.0, 0.0, 0.04])
    # Two branches at 0.3 m: line up in x, then move over the wall to the button.
    if abs(hand[0] - button[0]) > 0.02 or button[1] - hand[1] > 0.09:
        return "reach"
    if abs(hand[2] - button[2]) > 0.02:
        return "descend"
    return "press"


def _button_topdown_wall(obs, act):
    button = obs[OBJ1] + np.array([0.0, -0.06, 0.0])
    return "reach" if xy_dist(obs[HAND], button) > 0.04 else "press"


def _coffee_button(obs, act):
    hand, button = obs[HAND], obs[OBJ1] + np.array([0.0, 0.0, -0.07])
    aligned = np.linalg.norm(hand[[0, 2]] - button[[0, 2]]) <= 0.02
    return "press" if aligned else "reach"


def _handle_press(obs, act):
    handle = obs[OBJ1] + np.array([0.0, -0.02, 0.0])
    return "reach" if xy_dist(obs[HAND], handle) > 0.02 else "press"


def _plate_slide(offset, reach_radius: float):
    """Plate slide (side): above the plate's edge, down to it (0.04), push it to the goal."""
    offset = np.asarray(offset, np.float64)

    def phase(obs, act):
        hand, plate = obs[HAND], obs[OBJ1] + offset
        if xy_dist(hand, plate) > reach_radius:
            return "reach"
        if abs(hand[2] - plate[2]) > 0.04:
            return "descend"
        return "push"  # plate-slide-side: two branches, along the channel, then into the goal
    return phase


def _coffee_push(obs, act):
    hand, mug = obs[HAND], obs[OBJ1] + np.array([0.01, 0.0, 0.05])
    if xy_dist(hand, mug) > 0.06:
        return "reach"
    if abs(hand[2] - mug[2]) > 0.02:
        return "descend"
    return "push"


def _push_wall(obs, act):
    hand, obj = obs[HAND], obs[OBJ1] + np.array([-0.005, 0.0, 0.0])
    if xy_dist(hand, obj) > 0.02:
        return "reach"
    if abs(hand[2] - obj[2]) > 0.04:
        return "descend"
    return "push"  # to the goal, around the wall where it is in the way


def _pick_place_wall(obs, act):
    hand, puck = obs[HAND], obs[OBJ1] + np.array([-0.005, 0.0, 0.0])
    if xy_dist(hand, puck) > 0.015:
        return "reach"
    if abs(hand[2] - puck[2]) > 0.04 and puck[2] < 0.03:
        # Descending; the expert closes the gripper once it is near the puck: the grasp.
        return "grasp" if act[3] > 0 else "descend"
    return "transport"  # up over the wall, then to the goal


def _reach(obs, act):
    return "reach"  # both branches (rise over the wall, straight to the goal) reach the goal


_WALL = ("wall", "barrier")
_BUTTON = ("button", "red button")

EXTRA_SPECS: tuple[TaskSpec, ...] = (
    TaskSpec(
        "window-open-v3", _window(-0.03),
        primitives={
            "reach": ("move the gripper above the {handle}", "reach toward the {handle}",
                      "go above the {handle}"),
            "descend": ("lower the gripper beside the {handle}", "move down to the {handle}",
                        "bring the gripper down next to the {handle}"),
            "push": ("slide the {window} open", "push the {handle} to the side",
                     "push the {window} open"),
        },
        subtasks=((("reach the {handle}", "get to the {handle}"), ("reach", "descend")),
                  (("slide the {window} open", "open the {window}"), ("push",))),
        task=("open the {window}", "slide the {window} open", "push the {window} open"),
        nouns={"window": ("window", "sliding window"),
               "handle": ("window handle", "handle of the window")}),
    TaskSpec(
        "window-close-v3", _window(0.03),
        primitives={
            "reach": ("move the gripper above the {handle}", "reach toward the {handle}",
                      "go above the {handle}"),
            "descend": ("lower the gripper beside the {handle}", "move down to the {handle}",
                        "bring the gripper down next to the {handle}"),
            "push": ("slide the {window} shut", "push the {handle} to the side",
                     "push the {window} closed"),
        },
        subtasks=((("reach the {handle}", "get to the {handle}"), ("reach", "descend")),
                  (("slide the {window} shut", "close the {window}"), ("push",))),
        task=("close the {window}", "slide the {window} shut", "push the {window} closed"),
        nouns={"window": ("window", "sliding window"),
               "handle": ("window handle", "handle of the window")}),
    TaskSpec(
        "button-press-wall-v3", _button_wall,
        primitives={
            "reach": ("reach over the {wall} to the {button}",
                      "move the gripper over the {wall} toward the {button}",
                      "go above the {wall} in front of the {button}"),
            "descend": ("lower the gripper in front of the {button}", "move down to the {button}",
                        "bring the gripper down facing the {button}"),
            "press": ("push the {button} in", "press the {button}", "press the {button} forward"),
        },
        subtasks=((("get in front of the {button}", "reach the {button} behind the {wall}"),
                   ("reach", "descend")),
                  (("press the {button}", "push the {button} in"), ("press",))),
        task=("press the {button} behind the {wall}",
              "reach over the {wall} and press the {button}",
              "push in the {button} behind the {wall}"),
        nouns={"button": _BUTTON, "wall": _WALL}),
    TaskSpec(
        "button-press-topdown-wall-v3", _button_topdown_wall,
        primitives={
            "reach": ("move the gripper above the {button}", "reach over the {button}",
                      "go to the {button}"),
            "press": ("press the {button} down", "push down on the {button}",
                      "press the {button}"),
        },
        subtasks=((("get above the {button}", "reach the {button}"), ("reach",)),
                  (("press the {button} down", "push the {button} down"), ("press",))),
        task=("press the {button} from above", "push the {button} down from the top",
              "press down the {button} next to the {wall}"),
        nouns={"button": _BUTTON, "wall": _WALL}),
    TaskSpec(
        "coffee-button-v3", _coffee_button,
        primitives={
            "reach": ("line the gripper up with the {button}", "move in front of the {button}",
                      "align the gripper with the {button}"),
            "press": ("push the {button} in", "press the {button}", "press the {button} forward"),
        },
        subtasks=((("get in front of the {button}", "line up with the {button}"), ("reach",)),
                  (("press the {button}", "push the {button} in"), ("press",))),
        task=("press the {button} of the {machine}", "push the {button} on the {machine}",
              "switch on the {machine}"),
        nouns={"button": ("button", "coffee button"),
               "machine": ("coffee machine", "espresso machine")}),
    TaskSpec(
        "handle-press-v3", _handle_press,
        primitives={
            "reach": ("move the gripper above the {handle}", "reach over the {handle}",
                      "go to the {handle}"),
            "press": ("press the {handle} down", "push down on the {handle}",
                      "push the {handle} down"),
        },
        subtasks=((("get above the {handle}", "reach the {handle}"), ("reach",)),
                  (("press the {handle} down", "push the {handle} down"), ("press",))),
        task=("press the {handle} down", "push the {handle} down",
              "press down on the {handle}"),
        nouns={"handle": ("handle", "press handle")}),
    TaskSpec(
        "plate-slide-v3", _plate_slide([0.0, -0.055, 0.03], 0.03),
        primitives={
            "reach": ("move the gripper behind the {plate}", "reach for the {plate}",
                      "go above the {plate}"),
            "descend": ("lower the gripper behind the {plate}", "move down to the {plate}",
                        "bring the gripper down to the {plate}"),
            "push": ("slide the {plate} into the {goal}", "push the {plate} to the {goal}",
                     "shove the {plate} forward into the {goal}"),
        },
        subtasks=((("get behind the {plate}", "go to the {plate}"), ("reach", "descend")),
                  (("slide the {plate} into the {goal}", "push it into the {goal}"), ("push",))),
        task=("slide the {plate} into the {goal}", "push the {plate} into the {goal}",
              "slide the {plate} forward to the {goal}"),
        nouns={"plate": ("plate", "puck"), "goal": ("goal", "net", "goal cage")}),
    TaskSpec(
        "plate-slide-side-v3", _plate_slide([0.07, 0.0, -0.005], 0.04),
        primitives={
            "reach": ("move the gripper beside the {plate}", "reach for the side of the {plate}",
                      "go above the side of the {plate}"),
            "descend": ("lower the gripper beside the {plate}", "move down next to the {plate}",
                        "bring the gripper down beside the {plate}"),
            "push": ("slide the {plate} sideways into the {goal}",
                     "push the {plate} to the {goal}", "shove the {plate} into the {goal}"),
        },
        subtasks=((("get beside the {plate}", "go to the {plate}"), ("reach", "descend")),
                  (("slide the {plate} into the {goal}", "push it into the {goal}"), ("push",))),
        task=("slide the {plate} sideways into the {goal}",
              "push the {plate} into the {goal} from the side",
              "slide the {plate} to the {goal}"),
        nouns={"plate": ("plate", "puck"), "goal": ("goal", "net", "goal cage")}),
    TaskSpec(
        "coffee-push-v3", _coffee_push,
        primitives={
            "reach": ("move the gripper above the {mug}", "reach for the {mug}",
                      "approach the {mug}"),
            "descend": ("lower the gripper to the {mug}", "move down to the {mug}",
                        "bring the gripper down to the {mug}"),
            "push": ("push the {mug} under the {machine}", "slide the {mug} to the {machine}",
                     "shove the {mug} under the spout of the {machine}"),
        },
        subtasks=((("get to the {mug}", "go to the {mug}"), ("reach", "descend")),
                  (("push the {mug} under the {machine}", "slide it to the {machine}"),
                   ("push",))),
        task=("push the {mug} under the {machine}", "slide the {mug} under the {machine}",
              "move the {mug} to the {machine} by pushing it"),
        nouns={"mug": ("mug", "cup", "coffee mug"),
               "machine": ("coffee machine", "espresso machine")}),
    TaskSpec(
        "push-wall-v3", _push_wall,
        primitives={
            "reach": ("reach for the {obj}", "move the gripper above the {obj}",
                      "approach the {obj}"),
            "descend": ("lower the gripper to the {obj}", "move down to the {obj}",
                        "bring the gripper down to the {obj}"),
            "push": ("push the {obj} around the {wall} to the {goal}",
                     "slide the {obj} past the {wall} to the {goal}",
                     "push the {obj} to the {goal}"),
        },
        subtasks=((("get to the {obj}", "go to the {obj}"), ("reach", "descend")),
                  (("push the {obj} to the {goal}", "slide it around the {wall}"), ("push",))),
        task=("push the {obj} around the {wall} to the {goal}",
              "slide the {obj} past the {wall} to the {goal}",
              "move the {obj} to the {goal} behind the {wall} by pushing it"),
        nouns={"obj": ("puck", "red puck", "disc"), "goal": GOAL_NOUNS, "wall": _WALL}),
    TaskSpec(
        "pick-place-wall-v3", _pick_place_wall,
        primitives={
            "reach": ("reach for the {obj}", "move the gripper above the {obj}",
                      "approach the {obj}"),
            "descend": ("lower the gripper to the {obj}", "move down to the {obj}",
                        "bring the open gripper down around the {obj}"),
            "grasp": ("grasp the {obj}", "close the gripper on the {obj}", "grip the {obj}"),
            "transport": ("carry the {obj} over the {wall} to the {goal}",
                          "lift the {obj} over the {wall} and bring it to the {goal}",
                          "move the {obj} to the {goal}"),
        },
        subtasks=((("pick up the {obj}", "grab the {obj}", "take hold of the {obj}"),
                   ("reach", "descend", "grasp")),
                  (("place the {obj} at the {goal}", "bring it over the {wall} to the {goal}"),
                   ("transport",))),
        task=("pick up the {obj} and place it at the {goal} behind the {wall}",
              "lift the {obj} over the {wall} to the {goal}",
              "put the {obj} at the {goal} on the other side of the {wall}"),
        nouns={"obj": ("puck", "red puck", "disc"), "goal": GOAL_NOUNS, "wall": _WALL}),
    TaskSpec(
        "reach-wall-v3", _reach,
        primitives={"reach": ("reach the {goal} behind the {wall}",
                              "move the gripper over the {wall} to the {goal}",
                              "bring the hand to the {goal}")},
        subtasks=((("reach the {goal}", "go to the {goal}"), ("reach",)),),
        task=("reach the {goal} behind the {wall}",
              "move the gripper over the {wall} to the {goal}",
              "touch the {goal} point behind the {wall}"),
        nouns={"goal": GOAL_NOUNS, "wall": _WALL}),
)
