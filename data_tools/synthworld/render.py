"""Render the tabletop world into small RGB images: an overhead and a wrist camera.

Both cameras are downward-looking pinholes, and every object is drawn as flat axis-aligned
squares and discs in painter's order (lowest first). That is crude, but it is a few slice
assignments per object, so thousands of frames render in about a second, and it still shows
what the events are about: the gripper approaching, the cube growing in the wrist view as it
is reached, the cube rising when lifted, falling when it slips, and ending in the container.
The table texture is a function of world coordinates, so the wrist view visibly moves.
"""

from __future__ import annotations

import numpy as np

from .world import BOWL, CUBE_SIZE, MAX_OPENING, PLATE, World

OVERHEAD_HEIGHT = 0.9  # camera above the table, m
OVERHEAD_HALF_VIEW = 0.3  # half-width of the table seen at z=0, m
WRIST_OFFSET = 0.09  # wrist camera sits this far above the fingertips, m
WRIST_HALF_VIEW = 0.6  # tan of the half field of view
TABLE_RGB = np.array([168, 132, 96], dtype=np.float32)


def _shade(rgb, factor: float) -> np.ndarray:
    return np.clip(np.asarray(rgb, dtype=np.float32) * factor, 0, 255)


class Canvas:
    """An image plus clipped drawing primitives in pixel coordinates (u right, v down)."""

    def __init__(self, img: np.ndarray):
        self.img = img
        self.h, self.w = img.shape[:2]

    def rect(self, u: float, v: float, half_u: float, half_v: float, rgb) -> None:
        u0, u1 = int(round(u - half_u)), int(round(u + half_u))
        v0, v1 = int(round(v - half_v)), int(round(v + half_v))
        u0, v0 = max(u0, 0), max(v0, 0)
        u1, v1 = min(max(u1, u0 + 1), self.w), min(max(v1, v0 + 1), self.h)
        if u0 < self.w and v0 < self.h and u1 > 0 and v1 > 0:
            self.img[v0:v1, u0:u1] = rgb

    def disc(self, u: float, v: float, r: float, rgb, alpha: float = 1.0) -> None:
        u0, u1 = max(int(u - r - 1), 0), min(int(u + r + 2), self.w)
        v0, v1 = max(int(v - r - 1), 0), min(int(v + r + 2), self.h)
        if u0 >= u1 or v0 >= v1:
            return
        vv, uu = np.mgrid[v0:v1, u0:u1]
        mask = (uu + 0.5 - u) ** 2 + (vv + 0.5 - v) ** 2 <= r * r
        patch = self.img[v0:v1, u0:u1]
        patch[mask] = patch[mask] * (1 - alpha) + np.asarray(rgb, np.float32) * alpha


def table_texture(x: np.ndarray, y: np.ndarray, tone: float) -> np.ndarray:
    """Wooden-board look: planks along x plus a faint grain, as a function of world x, y."""
    plank = np.floor(y / 0.06)
    shade = 1.0 + 0.06 * np.sin(plank * 2.3) + 0.03 * np.sin(x * 90.0 + plank)
    return TABLE_RGB[None, None, :] * (tone * shade)[..., None]


class Renderer:
    """Draws one world from the overhead and wrist cameras at a given square image size."""

    def __init__(self, world: World, size: int, rng: np.random.Generator):
        self.size = size
        self.c = size / 2.0
        self.tone = float(rng.uniform(0.85, 1.1))  # per-episode lighting
        self.f_over = self.c * OVERHEAD_HEIGHT / OVERHEAD_HALF_VIEW
        self.f_wrist = self.c / WRIST_HALF_VIEW
        px = (np.arange(size) + 0.5 - self.c) / self.c  # normalised pixel coords
        self._pu, self._pv = np.meshgrid(px, px)
        # Containers never move: draw them once into the overhead background.
        over = table_texture(self._pu * OVERHEAD_HALF_VIEW, -self._pv * OVERHEAD_HALF_VIEW, self.tone)
        canvas = Canvas(over.astype(np.float32))
        for b in world.bodies:
            if b.kind != "cube":
                self._container(canvas, b, self._project_over)
        self._over_bg = canvas.img

    # ---- projections: world point -> (u, v, pixels per metre) -----------------------------
    def _project_over(self, x: float, y: float, z: float):
        scale = self.f_over / max(OVERHEAD_HEIGHT - z, 0.05)
        return self.c + x * scale, self.c - y * scale, scale

    def _wrist_projector(self, world: World):
        cam = world.ee + np.array([0.0, 0.0, WRIST_OFFSET])

        def project(x: float, y: float, z: float):
            depth = cam[2] - z
            if depth < 0.015:
                return None
            scale = self.f_wrist / depth
            return self.c + (x - cam[0]) * scale, self.c - (y - cam[1]) * scale, scale
        return cam, project

    # ---- objects ---------------------------------------------------------------------------
    def _container(self, canvas: Canvas, b, project) -> None:
        spec = BOWL if b.kind == "bowl" else PLATE
        rim = project(b.pos[0], b.pos[1], spec["rim"])
        floor = project(b.pos[0], b.pos[1], spec["floor"])
        if rim is None or floor is None:
            return
        canvas.disc(rim[0], rim[1], b.size * rim[2], _shade(b.rgb, 0.7))
        inner = 0.78 if b.kind == "bowl" else 0.88
        canvas.disc(floor[0], floor[1], b.size * inner * floor[2], _shade(b.rgb, 1.0))

    def _cube(self, canvas: Canvas, b, project) -> None:
        bottom = project(b.pos[0], b.pos[1], b.pos[2])
        top = project(b.pos[0], b.pos[1], b.pos[2] + CUBE_SIZE)
        half = CUBE_SIZE / 2
        if bottom is not None:
            canvas.rect(bottom[0], bottom[1], half * bottom[2], half * bottom[2], _shade(b.rgb, 0.6))
        if top is not None:
            canvas.rect(top[0], top[1], half * top[2], half * top[2], _shade(b.rgb, 1.0))

    def _cubes_in_height_order(self, world: World):
        cubes = [b for b in world.bodies if b.kind == "cube"]
        return sorted(cubes, key=lambda b: float(b.pos[2]))

    # ---- cameras ---------------------------------------------------------------------------
    def overhead(self, world: World) -> np.ndarray:
        canvas = Canvas(self._over_bg.copy())
        ee = world.ee
        sx, sy, ss = self._project_over(ee[0], ee[1], 0.0)
        canvas.disc(sx, sy, 0.03 * ss, (20, 20, 20), alpha=0.35)  # gripper shadow: height cue
        for b in self._cubes_in_height_order(world):
            if b.pos[2] < ee[2]:
                self._cube(canvas, b, self._project_over)
        gx, gy, gs = self._project_over(ee[0], ee[1], ee[2] + 0.03)
        gap = world.opening * MAX_OPENING / 2 + 0.008
        canvas.rect(gx, gy, 0.012 * gs, 0.018 * gs, (70, 70, 75))  # palm
        for side in (-1, 1):
            canvas.rect(gx + side * gap * gs, gy, 0.008 * gs, 0.014 * gs, (35, 35, 40))
        for b in self._cubes_in_height_order(world):
            if b.pos[2] >= ee[2]:  # rare: a cube above the gripper
                self._cube(canvas, b, self._project_over)
        return canvas.img.astype(np.uint8)

    def wrist(self, world: World) -> np.ndarray:
        cam, project = self._wrist_projector(world)
        # Ray through each pixel hits the table at depth cam_z: world x, y of the table there.
        spread = cam[2] / self.f_wrist * self.c
        canvas = Canvas(table_texture(cam[0] + self._pu * spread, cam[1] - self._pv * spread,
                                      self.tone * 0.95).astype(np.float32))
        for b in world.bodies:
            if b.kind != "cube":
                self._container(canvas, b, project)
        for b in self._cubes_in_height_order(world):
            self._cube(canvas, b, project)
        # Fingers: fixed depth below the camera, their gap follows the opening.
        scale = self.f_wrist / WRIST_OFFSET
        gap = (world.opening * MAX_OPENING / 2 + 0.006) * scale
        for side in (-1, 1):
            canvas.rect(self.c + side * gap, self.size * 0.78, 0.006 * scale, self.size * 0.22,
                        (40, 40, 45))
        return np.clip(canvas.img, 0, 255).astype(np.uint8)
