"""One Meta-World task: its environment, its scripted expert and seeded per-episode layouts.

Meta-World's public way to vary object and goal positions is a benchmark's fixed list of 50
pre-sampled ``Task`` layouts per environment. Recording wants an unbounded, reproducible
stream instead, so each episode reseeds the environment's own generator and lets ``reset``
draw a fresh layout from it (the goal-observable env's ``seeded_rand_vec`` switch). That
touches two private attributes of ``SawyerXYZEnv``; ``tests/data_tools/test_dt_metaworld.py``
fails if a Meta-World release changes them. The expert policies are stateless, so one policy
object serves all episodes.
"""

from __future__ import annotations

import warnings

import numpy as np

from .gl import import_metaworld

# Meta-World runs MuJoCo at 2.5 ms per physics step and 5 physics steps per env step: 80 Hz.
FPS = 80
# The observation layout shared by all v3 environments (SawyerXYZEnv._get_obs).
HAND = slice(0, 3)
GRIPPER = 3
OBJ1 = slice(4, 7)
PREV_HAND = slice(18, 21)
GOAL = slice(36, 39)
OBS_NAMES = (["hand_x", "hand_y", "hand_z", "gripper_opening"]
             + [f"obj{i}_{c}" for i in (1, 2) for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]
             + ["prev_hand_x", "prev_hand_y", "prev_hand_z", "prev_gripper_opening"]
             + [f"prev_obj{i}_{c}" for i in (1, 2) for c in ("x", "y", "z", "qw", "qx", "qy", "qz")]
             + ["goal_x", "goal_y", "goal_z"])
PROPRIO_NAMES = ["hand_x", "hand_y", "hand_z", "gripper_opening", "hand_vx", "hand_vy", "hand_vz"]
ACTION_NAMES = ["hand_dx", "hand_dy", "hand_dz", "grip_effort"]


def proprio_state(obs: np.ndarray) -> np.ndarray:
    """Hand position (m), gripper opening (0 closed .. 1 open) and hand velocity (m/s).

    The velocity comes from the observation's own previous-frame copy, so the first frame of
    an episode (where Meta-World repeats the current frame) has zero velocity.
    """
    vel = (obs[HAND] - obs[PREV_HAND]) * FPS
    return np.concatenate([obs[HAND], obs[GRIPPER:GRIPPER + 1], vel]).astype(np.float32)


def full_state(obs: np.ndarray) -> np.ndarray:
    """The raw 39-D observation (hand, gripper, two object poses, previous frame, goal)."""
    return np.asarray(obs, np.float32)


STATE_KINDS = {"proprio": (PROPRIO_NAMES, proprio_state), "full": (OBS_NAMES, full_state)}


class TaskEnv:
    """Environment + expert of one task; ``reset(seed)`` gives a layout set by the seed alone."""

    def __init__(self, task: str, max_steps: int):
        metaworld = import_metaworld()
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE
        from metaworld.policies import ENV_POLICY_MAP

        key = f"{task}-goal-observable"
        if key not in ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE or task not in ENV_POLICY_MAP:
            raise ValueError(f"task {task!r}: metaworld {getattr(metaworld, '__version__', '')} "
                             "has no such v3 environment with an expert policy")
        # The constructor's seed only fixes the throwaway first layout; it saves and restores
        # numpy's global RNG, so constructing an env has no side effect on other code.
        self.env = ALL_V3_ENVIRONMENTS_GOAL_OBSERVABLE[key](seed=0)
        self.env.max_path_length = max(max_steps, type(self.env).max_path_length)
        self.policy = ENV_POLICY_MAP[task]()
        self.task = task

    @property
    def model(self):
        return self.env.model

    @property
    def data(self):
        return self.env.data

    def reset(self, seed: int) -> np.ndarray:
        env = self.env
        env._freeze_rand_vec = False
        env.seeded_rand_vec = True
        env.seed(seed)
        obs, _ = env.reset()
        return obs

    def expert_action(self, obs: np.ndarray) -> np.ndarray:
        # Some experts edit slices of the observation in place (door-open shifts the handle
        # position), so they get a copy; their "constant may be too high" warning is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(self.policy.get_action(obs.copy()), np.float64)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, dict]:
        obs, _, _, _, info = self.env.step(action)
        return obs, info

    def close(self) -> None:
        self.env.close()
