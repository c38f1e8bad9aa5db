"""Caption templates for the three caption levels of the synthetic tasks.

L3 names the whole task, L2 a subtask ("pick up the red cube", "put it in the blue bowl"),
L1 an action primitive (reach, grasp, lift, transport, place, release, regrasp). Several
paraphrases per caption, picked by the episode's seeded RNG, so a text encoder sees some
variety while the mapping from event to meaning stays exact. Plain format strings keep the
vocabulary easy to audit and extend.
"""

from __future__ import annotations

import re

import numpy as np

L3 = {
    "place_in": ["put the {a} in the {t}", "place the {a} into the {t}",
                 "move the {a} into the {t}", "pick up the {a} and drop it in the {t}"],
    "place_on": ["put the {a} on the {t}", "place the {a} onto the {t}",
                 "set the {a} down on the {t}", "move the {a} onto the {t}"],
    "stack": ["stack the {a} on the {t}", "put the {a} on top of the {t}",
              "place the {a} onto the {t}", "build a tower: the {a} on the {t}"],
    "two_in": ["put the {a} and the {b} in the {t}", "place both the {a} and the {b} into the {t}",
               "move the {a} and then the {b} into the {t}"],
    "two_on": ["put the {a} and the {b} on the {t}", "place both the {a} and the {b} onto the {t}",
               "move the {a} and then the {b} onto the {t}"],
}
L2_PICK = ["pick up the {a}", "grab the {a}", "take the {a}", "get the {a}"]
L2_PLACE = {"in": ["put it in the {t}", "place it into the {t}", "drop it in the {t}"],
            "on": ["put it on the {t}", "place it onto the {t}", "set it down on the {t}"]}
L1 = {
    "reach": ["reach for the {a}", "move the gripper to the {a}", "approach the {a}"],
    "grasp": ["grasp the {a}", "close the gripper on the {a}", "grip the {a}"],
    "lift": ["lift the {a}", "raise the {a}", "lift the {a} off the surface"],
    "transport": ["carry the {a} to the {t}", "move the {a} over the {t}",
                  "bring the {a} above the {t}"],
    "place": ["lower the {a} {p} the {t}", "set the {a} down {p} the {t}",
              "place the {a} {p} the {t}"],
    "release": ["release the {a}", "open the gripper and let go of the {a}", "let go of the {a}"],
    "regrasp": ["regrasp the {a}", "the {a} slipped: grasp it again", "try grasping the {a} again"],
}


def preposition(target_kind: str) -> str:
    """'in' a bowl, 'on' a plate or a cube."""
    return "in" if target_kind == "bowl" else "on"


def pick(rng: np.random.Generator, options: list[str], **names: str) -> str:
    return options[int(rng.integers(len(options)))].format(**names)


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template)
    for name in ("a", "b", "t", "p"):
        pattern = pattern.replace(re.escape("{" + name + "}"), ".+")
    return re.compile(pattern + r"\Z")


_L1_PATTERNS = [(name, _template_regex(t)) for name, ts in L1.items() for t in ts]


def primitive_of(caption: str) -> str | None:
    """The L1 primitive (reach, grasp, ...) a synthetic L1 caption was made from, or None."""
    names = {name for name, rx in _L1_PATTERNS if rx.match(caption)}
    return names.pop() if len(names) == 1 else None
