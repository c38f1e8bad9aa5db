"""Generate a synthetic event-annotated dataset: episodes -> LeRobot v3.0 (or v2.1) + events.jsonl.

Each episode draws its scene, task family, speed limits, captions and whether a grasp slips
from ``numpy.random.default_rng([seed, episode_index])``, so an episode depends only on the
seed and its own index (episode 7 is the same whether 8 or 800 are generated) and the files are
identical between runs. Task families: one cube into a bowl / onto a plate, stacking one cube
on another, and two cubes into one container (four L2 subtasks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..events import EVENTS_FILE, Event, write_events
from ..lerobot import writer_class
from . import captions as C
from .policy import Recording, ScriptedEpisode
from .render import Renderer
from .world import World

VIEWS = ("overhead", "wrist")
STATE_NAMES = ["ee_x", "ee_y", "ee_z", "gripper_opening", "ee_vx", "ee_vy", "ee_vz", "holding"]
ACTION_NAMES = ["ee_dx", "ee_dy", "ee_dz", "gripper_command"]
FAMILIES = ("single", "stack", "two")
FAMILY_WEIGHTS = (0.5, 0.25, 0.25)


def video_key(view: str) -> str:
    return f"observation.images.{view}"


@dataclass
class SynthEpisode:
    task: str
    states: np.ndarray
    actions: np.ndarray
    frames: dict[str, np.ndarray]  # view -> uint8 [T, H, W, 3]
    events: list[Event]
    primitives: list[str]  # L1 primitive names in order (reach, grasp, ...)


def _events(ep: int, task: str, rec: Recording) -> list[Event]:
    n = len(rec.actions)
    events = [Event(ep, "L3", 0, 0, n, task, None)]
    parent_of = {}
    for j, (caption, first, last) in enumerate(rec.subtasks):
        start, end = rec.primitives[first].start, rec.primitives[last].end
        events.append(Event(ep, "L2", j, start, end, caption, 0))
        parent_of.update({k: j for k in range(first, last + 1)})
    for k, p in enumerate(rec.primitives):
        events.append(Event(ep, "L1", k, p.start, p.end, p.caption, parent_of.get(k)))
    return events


def simulate_episode(ep: int, seed: int, image_size: int, fps: int,
                     regrasp_prob: float) -> SynthEpisode:
    rng = np.random.default_rng([seed, ep])
    family = FAMILIES[int(rng.choice(len(FAMILIES), p=FAMILY_WEIGHTS))]
    world = World.sample(rng, n_cubes=int(rng.integers(2, 5)), n_containers=int(rng.integers(1, 3)),
                         fps=fps)
    cubes = [i for i, b in enumerate(world.bodies) if b.kind == "cube"]
    containers = [i for i, b in enumerate(world.bodies) if b.kind != "cube"]
    order = [int(i) for i in rng.permutation(cubes)]
    if family == "stack":
        moves, target = [order[0]], order[1]
    elif family == "two":
        moves, target = order[:2], int(rng.choice(containers))
    else:
        moves, target = order[:1], int(rng.choice(containers))
    t = world.bodies[target]
    prep = C.preposition(t.kind)
    names = {"a": world.bodies[moves[0]].name, "t": t.name}
    if family == "stack":
        task = C.pick(rng, C.L3["stack"], **names)
    elif family == "two":
        task = C.pick(rng, C.L3[f"two_{prep}"], b=world.bodies[moves[1]].name, **names)
    else:
        task = C.pick(rng, C.L3[f"place_{prep}"], **names)
    # Decide the long tail first, so regrasp_prob changes nothing else about the episode.
    slip_draw, slip_which = rng.random(), int(rng.integers(len(moves)))
    slips = [slip_draw < regrasp_prob and k == slip_which for k in range(len(moves))]
    offsets = [np.zeros(2)] if len(moves) == 1 else [np.array([-0.03, 0.0]), np.array([0.03, 0.0])]

    script = ScriptedEpisode(world, Renderer(world, image_size, rng), rng)
    for k, i in enumerate(moves):
        a = world.bodies[i].name
        script.subtask(C.pick(rng, C.L2_PICK, a=a), lambda i=i, k=k: script.pick(i, slips[k]))
        script.subtask(C.pick(rng, C.L2_PLACE[prep], t=t.name),
                       lambda i=i, k=k: script.place(i, target, offsets[k]))
    rec = script.finish()
    return SynthEpisode(
        task=task, states=np.stack(rec.states), actions=np.stack(rec.actions),
        frames={"overhead": np.stack(rec.overhead), "wrist": np.stack(rec.wrist)},
        events=_events(ep, task, rec), primitives=[p.name for p in rec.primitives])


def synthesize(out: Path, episodes: int, seed: int, image_size: int = 64, fps: int = 10,
               regrasp_prob: float = 0.2, vcodec: str = "h264", frames_per_file: int = 100_000,
               progress: bool = True, layout: str = "v3.0") -> dict:
    """Write ``episodes`` simulated episodes under ``out`` in LeRobot ``layout`` (v3.0 or v2.1);
    returns a small summary."""
    writer = writer_class(layout)(out, fps, STATE_NAMES, ACTION_NAMES, [video_key(v) for v in VIEWS],
                             image_size, image_size, vcodec=vcodec, robot_type="synth_gripper",
                             frames_per_file=frames_per_file)
    all_events: list[Event] = []
    regrasps = 0
    for ep in tqdm(range(episodes), desc="synth episodes", unit="ep", disable=not progress):
        e = simulate_episode(ep, seed, image_size, fps, regrasp_prob)
        writer.add_episode(e.states, e.actions, {video_key(v): e.frames[v] for v in VIEWS}, e.task)
        all_events.extend(e.events)
        regrasps += e.primitives.count("regrasp")
    info = writer.finish()
    write_events(Path(out) / EVENTS_FILE, all_events)
    return {"episodes": episodes, "frames": info["total_frames"], "events": len(all_events),
            "regrasp_events": regrasps}

