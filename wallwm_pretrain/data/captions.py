"""The length-aware caption drop (the vocabulary itself is ``wallwm_pretrain.captions``).

The caption drop lives here and nowhere else. Following WALL-WM, the probability of dropping
an event's caption rises with the event's length L_e along a cosine ramp:
rho = rho_min for L_e <= L_min, rho_max for L_e >= L_max, and in between
rho_min + (rho_max - rho_min) * (1 - cos(pi * u)) / 2 with u = (L_e - L_min) / (L_max - L_min).
Long events are where the video and state already say most of what happens, so the model is
pushed to rely on them there and on language for short, ambiguous events.
"""

from __future__ import annotations

import math
import random


from wallwm_pretrain.config import CaptionDropConfig


def drop_probability(length: int, cfg: CaptionDropConfig) -> float:
    """rho(L_e) of the cosine ramp described in the module docstring."""
    if length <= cfg.l_min:
        return cfg.rho_min
    if length >= cfg.l_max:
        return cfg.rho_max
    u = (length - cfg.l_min) / (cfg.l_max - cfg.l_min)
    return cfg.rho_min + (cfg.rho_max - cfg.rho_min) * (1.0 - math.cos(math.pi * u)) / 2.0


def drops(length: int, cfg: CaptionDropConfig, rng: random.Random) -> bool:
    """Whether this event's caption is dropped: probability rho(length), one draw of ``rng``."""
    return rng.random() < drop_probability(length, cfg)
