"""A tiny tabletop world: a gripper, coloured cubes and containers, in metres.

Kinematics only, no contact physics: the gripper moves by the commanded delta, its fingers
close at a limited rate, a cube whose centre sits between the closing fingers becomes attached,
and anything unsupported falls onto the highest surface below it (table, bowl floor, plate,
another cube). That is enough to produce believable reach/grasp/lift/place events with
naturally varying lengths, at a cost of microseconds per step. A slip (failed grasp) is an
explicit call made by the scripted policy, so the long tail is controlled by a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CUBE_COLOURS = {"red": (205, 45, 40), "green": (45, 165, 70), "blue": (45, 80, 205),
                "yellow": (225, 200, 45)}
CONTAINER_COLOURS = {"blue": (60, 95, 200), "purple": (130, 70, 170), "orange": (235, 130, 40),
                     "pink": (230, 120, 170), "white": (225, 225, 220)}
CUBE_SIZE = 0.05
MAX_OPENING = 0.09  # finger gap at opening 1.0
BOWL = {"radius": 0.075, "floor": 0.01, "rim": 0.04}
PLATE = {"radius": 0.08, "floor": 0.01, "rim": 0.012}
TABLE_HALF = 0.26  # objects are placed within this square
GRAVITY = 1.2  # m/s^2, slowed down so that a dropped cube is visible for a few frames


@dataclass
class Body:
    kind: str  # "cube", "bowl" or "plate"
    colour: str
    pos: np.ndarray  # x, y of the centre; z of the bottom
    size: float  # cube edge, or container radius
    vz: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def rgb(self) -> tuple[int, int, int]:
        table = CUBE_COLOURS if self.kind == "cube" else CONTAINER_COLOURS
        return table[self.colour]

    def top(self) -> float:
        if self.kind == "cube":
            return float(self.pos[2]) + self.size
        return (BOWL if self.kind == "bowl" else PLATE)["floor"]


@dataclass
class World:
    bodies: list[Body]
    ee: np.ndarray = field(default_factory=lambda: np.array([0.0, -0.12, 0.25]))
    opening: float = 1.0
    vel: np.ndarray = field(default_factory=lambda: np.zeros(3))
    held: int | None = None
    grip_speed: float = 0.2  # opening change per step
    fps: int = 10

    # ---- scene construction -------------------------------------------------------------
    @classmethod
    def sample(cls, rng: np.random.Generator, n_cubes: int, n_containers: int, fps: int) -> "World":
        cubes = rng.choice(list(CUBE_COLOURS), size=n_cubes, replace=False)
        conts = rng.choice(list(CONTAINER_COLOURS), size=n_containers, replace=False)
        bodies: list[Body] = []
        placed: list[tuple[np.ndarray, float]] = []
        specs = [("bowl" if rng.random() < 0.6 else "plate", c) for c in conts]
        specs += [("cube", c) for c in cubes]
        for kind, colour in specs:
            size = CUBE_SIZE if kind == "cube" else (BOWL if kind == "bowl" else PLATE)["radius"]
            reach = size * 0.75 if kind == "cube" else size
            for _ in range(200):  # rejection sampling keeps objects apart
                xy = rng.uniform(-TABLE_HALF + reach, TABLE_HALF - reach, size=2)
                if all(np.linalg.norm(xy - p) > reach + r + 0.03 for p, r in placed):
                    break
            placed.append((xy, reach))
            bodies.append(Body(kind, str(colour), np.array([xy[0], xy[1], 0.0]), size))
        start = np.array([rng.uniform(-0.08, 0.08), rng.uniform(-0.2, -0.1), rng.uniform(0.2, 0.28)])
        grip_speed = float(rng.uniform(1.4, 3.0)) / fps  # opening change per step
        return cls(bodies, ee=start, grip_speed=grip_speed, fps=fps)

    def find(self, kind: str, colour: str) -> int:
        return next(i for i, b in enumerate(self.bodies) if b.kind == kind and b.colour == colour)

    # ---- state ------------------------------------------------------------------------------
    def state(self) -> np.ndarray:
        """8 floats: ee xyz, gripper opening, ee velocity xyz (m/s), holding flag."""
        return np.array([*self.ee, self.opening, *(self.vel * self.fps),
                         1.0 if self.held is not None else 0.0], dtype=np.float32)

    def cube_fraction(self) -> float:
        """Opening at which the fingers touch a cube."""
        return CUBE_SIZE / MAX_OPENING

    def support_height(self, i: int) -> float:
        """Highest surface under body i's footprint."""
        b = self.bodies[i]
        h = 0.0
        for j, o in enumerate(self.bodies):
            if j == i or j == self.held:
                continue
            d = np.linalg.norm(b.pos[:2] - o.pos[:2])
            if o.kind == "cube" and d < CUBE_SIZE * 0.9 and o.pos[2] < b.pos[2]:
                h = max(h, o.top())
            elif o.kind != "cube" and d < o.size:
                h = max(h, o.top())
        return h

    def settled(self) -> bool:
        return all(b.vz == 0.0 for b in self.bodies)

    # ---- dynamics ---------------------------------------------------------------------------
    def step(self, action: np.ndarray) -> None:
        delta, command = np.asarray(action[:3], dtype=np.float64), float(action[3])
        self.ee = self.ee + delta
        self.ee[2] = max(self.ee[2], 0.005)
        self.vel = delta
        target = float(np.clip(command, 0.0, 1.0))
        change = float(np.clip(target - self.opening, -self.grip_speed, self.grip_speed))
        self.opening += change
        touch = self.cube_fraction()
        if self.held is not None:
            if target > touch:  # fingers open past the cube: let go
                self._drop()
            else:
                self.opening = max(self.opening, touch)  # fingers rest on the cube
        elif change < 0 and self.opening <= touch:
            i = self._cube_between_fingers()
            if i is not None:
                self.held, self.opening = i, touch
        self.opening = float(np.clip(self.opening, 0.0, 1.0))
        if self.held is not None:
            b = self.bodies[self.held]
            b.pos = self.ee - np.array([0.0, 0.0, CUBE_SIZE / 2])
        self._fall()

    def _cube_between_fingers(self) -> int | None:
        for i, b in enumerate(self.bodies):
            if b.kind != "cube":
                continue
            centre = b.pos + np.array([0.0, 0.0, CUBE_SIZE / 2])
            if np.linalg.norm(centre[:2] - self.ee[:2]) < 0.012 and abs(centre[2] - self.ee[2]) < 0.015:
                return i
        return None

    def _drop(self) -> None:
        self.bodies[self.held].vz = -1e-9  # mark as falling; _fall settles it
        self.held = None

    def slip(self, rng: np.random.Generator) -> None:
        """The held cube slips out of the fingers; it lands slightly displaced."""
        if self.held is None:
            return
        b = self.bodies[self.held]
        b.pos = b.pos + np.array([*rng.uniform(-0.015, 0.015, size=2), 0.0])
        self._drop()
        self.opening = 0.0  # the fingers snap shut on nothing

    def _fall(self) -> None:
        for i, b in enumerate(self.bodies):
            if i == self.held or b.kind != "cube":
                continue
            floor = self.support_height(i)
            if b.pos[2] > floor + 1e-6 or b.vz != 0.0:
                b.vz -= GRAVITY / self.fps ** 2
                b.pos[2] = max(floor, b.pos[2] + b.vz)
                if b.pos[2] <= floor:
                    b.pos[2], b.vz = floor, 0.0
