"""Scripted pick-and-place policy that records one episode with its L1/L2 events.

Each step records the observation (state + camera images), then computes and applies an
action (ee delta xyz + gripper command). Motions go through a speed- and acceleration-limited
point controller whose limits are drawn per episode, so event lengths follow distances and
speeds instead of a fixed clock. A scheduled slip during one lift produces the long-tail
"regrasp" event. The trade-off: the policy reads the true world state, so it never fails to
recover; real failure modes beyond a slip are out of scope.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import captions as C
from .render import Renderer
from .world import BOWL, CUBE_SIZE, PLATE, World

HOVER = 0.10  # approach height above the grasp point, m
ARRIVED = 1e-4  # m: a waypoint counts as reached


@dataclass
class Primitive:
    """One L1 event: name, caption and frame span [start, end)."""
    name: str
    caption: str
    start: int
    end: int = -1


@dataclass
class Recording:
    states: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    overhead: list[np.ndarray] = field(default_factory=list)
    wrist: list[np.ndarray] = field(default_factory=list)
    primitives: list[Primitive] = field(default_factory=list)
    subtasks: list[tuple[str, int, int]] = field(default_factory=list)  # caption, first, last L1


class ScriptedEpisode:
    """Runs a list of (cube, target) moves in ``world`` and records everything."""

    def __init__(self, world: World, renderer: Renderer, rng: np.random.Generator,
                 max_steps: int = 600):
        self.world, self.renderer, self.rng = world, renderer, rng
        self.rec = Recording()
        dt = 1.0 / world.fps  # limits are drawn in SI units so --fps changes sampling, not motion
        self.vmax = float(rng.uniform(0.22, 0.45)) * dt  # m/step
        self.amax = float(rng.uniform(0.6, 1.2)) * dt * dt  # m/step^2
        self.noise = float(rng.uniform(0.0, 0.015)) * dt  # small hand tremor on long moves
        self.max_steps = max_steps

    # ---- low level --------------------------------------------------------------------------
    def _step(self, delta: np.ndarray, grip: float) -> None:
        if len(self.rec.actions) >= self.max_steps:
            raise RuntimeError("scripted episode did not finish; world or policy bug")
        w = self.world
        self.rec.states.append(w.state())
        self.rec.overhead.append(self.renderer.overhead(w))
        self.rec.wrist.append(self.renderer.wrist(w))
        action = np.array([*delta, grip], dtype=np.float32)
        self.rec.actions.append(action)
        w.step(action)

    def _move(self, target, grip: float, speed: float = 1.0, until=None) -> None:
        """Drive the ee to ``target`` under speed/acceleration limits (or until ``until()``)."""
        target = np.asarray(target, dtype=np.float64)
        while True:
            if until is not None and until():
                return
            d = target - self.world.ee
            dist = float(np.linalg.norm(d))
            if dist < ARRIVED:
                return
            v_now = float(np.linalg.norm(self.world.vel))
            # Accelerate, cruise, then brake so that we stop on the target; the floor keeps
            # the final approach from creeping forever.
            brake = max(np.sqrt(2 * self.amax * dist), 0.1 * self.vmax)
            v = min(self.vmax * speed, v_now + self.amax, brake, dist)
            delta = d / dist * v
            if dist > 0.03 and self.noise:
                delta = delta + self.rng.normal(0.0, self.noise, size=3)
            self._step(delta, grip)

    def _gripper(self, grip: float, done) -> None:
        while not done():
            self._step(np.zeros(3), grip)

    def _begin(self, name: str, caption: str) -> None:
        n = len(self.rec.actions)
        if self.rec.primitives:
            self.rec.primitives[-1].end = n
        self.rec.primitives.append(Primitive(name, caption, n))

    # ---- primitives -------------------------------------------------------------------------
    def _grasp_point(self, i: int) -> np.ndarray:
        return self.world.bodies[i].pos + np.array([0.0, 0.0, CUBE_SIZE / 2])

    def _approach_and_close(self, i: int) -> None:
        g = self._grasp_point(i)
        self._move(g + [0, 0, HOVER], grip=1.0)
        self._move(g, grip=1.0, speed=0.6)

    def pick(self, i: int, slip: bool) -> None:
        w, a = self.world, self.world.bodies[i].name
        names = {"a": a}
        self._begin("reach", C.pick(self.rng, C.L1["reach"], **names))
        self._approach_and_close(i)
        self._begin("grasp", C.pick(self.rng, C.L1["grasp"], **names))
        self._gripper(0.0, lambda: w.held == i)
        self._step(np.zeros(3), 0.0)  # settle: the fingers have stopped on the cube
        lift_to = w.ee + [0, 0, float(self.rng.uniform(0.1, 0.16))]
        self._begin("lift", C.pick(self.rng, C.L1["lift"], **names))
        if slip:
            slip_at = len(self.rec.actions) + max(1, round(self.rng.uniform(0.2, 0.5) * w.fps))
            self._move(lift_to, grip=0.0, until=lambda: len(self.rec.actions) >= slip_at)
            w.slip(self.rng)
            # The policy notices the empty grip, stops and waits until the cube is at rest.
            self._gripper(0.0, w.settled)
            self._begin("regrasp", C.pick(self.rng, C.L1["regrasp"], **names))
            self._gripper(1.0, lambda: w.opening >= 1.0)
            self._approach_and_close(i)
            self._gripper(0.0, lambda: w.held == i)
            self._step(np.zeros(3), 0.0)
            self._begin("lift", C.pick(self.rng, C.L1["lift"], **names))
        self._move(lift_to, grip=0.0)

    def place(self, i: int, target: int, offset: np.ndarray) -> None:
        w = self.world
        t = w.bodies[target]
        prep = C.preposition(t.kind)
        names = {"a": w.bodies[i].name, "t": t.name, "p": prep}
        carry_z = max(w.ee[2], t.top() + CUBE_SIZE * 1.5 + 0.06)
        goal = t.pos[:2] + offset
        self._begin("transport", C.pick(self.rng, C.L1["transport"], **names))
        self._move([goal[0], goal[1], carry_z], grip=0.0)
        if t.kind == "cube":
            rest = t.top()
        else:
            rest = (BOWL if t.kind == "bowl" else PLATE)["floor"]
        self._begin("place", C.pick(self.rng, C.L1["place"], **names))
        self._move([goal[0], goal[1], rest + CUBE_SIZE / 2 + 0.004], grip=0.0, speed=0.5)
        self._begin("release", C.pick(self.rng, C.L1["release"], **names))
        self._gripper(1.0, lambda: w.opening >= 1.0 and w.settled())
        self._move(w.ee + [0, 0, float(self.rng.uniform(0.05, 0.09))], grip=1.0)

    def finish(self) -> Recording:
        """Record the final observation (with a zero action) and close the last event."""
        self._step(np.zeros(3), float(self.world.opening >= 0.99))
        self.rec.primitives[-1].end = len(self.rec.actions)
        return self.rec

    def subtask(self, caption: str, run) -> None:
        first = len(self.rec.primitives)
        run()
        self.rec.subtasks.append((caption, first, len(self.rec.primitives) - 1))
