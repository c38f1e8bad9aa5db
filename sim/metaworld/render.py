"""Render several Meta-World cameras per step, upright, at small sizes and at a usable speed.

Two facts about Meta-World's scene shape this module:
- Its fixed ``corner*`` cameras are defined with their up axis pointing at the floor, so MuJoCo
  renders them upside down. A camera rolled by 180 degrees shows the same scene rotated by 180
  degrees (not mirrored), so the fix is a 180-degree image rotation; a vertical flip alone
  would give a mirror image. Which cameras need it is read from the camera's up axis after
  reset rather than from a list of names, so moving and future cameras are handled too.
- Its default visuals (a shadow-casting light, reflective materials, 4x multisampling) make
  software rendering slow (about 16 fps at 64 px here). Shadows and reflections are barely
  visible at 64-128 px, so they are switched off before the first render; multisampling
  (anti-aliasing) stays off unless asked for, which is the largest single saving (about
  60 -> 110+ fps at 64 px with Mesa's llvmpipe). Physics is untouched by all of this.
"""

from __future__ import annotations

import numpy as np


def list_cameras(model) -> list[str]:
    import mujoco

    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(model.ncam)]


def speed_up_visuals(model, image_size: int, antialias: bool) -> None:
    """Turn off shadows and reflections (and MSAA unless antialias) in the model's visuals."""
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0
    model.vis.quality.shadowsize = 0
    model.vis.quality.offsamples = 4 if antialias else 0
    # The offscreen buffer must be at least as large as the images asked for.
    model.vis.global_.offwidth = max(model.vis.global_.offwidth, image_size)
    model.vis.global_.offheight = max(model.vis.global_.offheight, image_size)


def upside_down(data, camera_id: int) -> bool:
    """True when the camera's up axis (second column of its frame) points below the horizon."""
    return float(data.cam_xmat[camera_id].reshape(3, 3)[2, 1]) < 0.0


class CameraRig:
    """Renders the named cameras of one model; ``render(data)`` -> {camera: uint8 [H, W, 3]}."""

    def __init__(self, model, data, cameras: list[str], image_size: int, antialias: bool = False):
        import mujoco

        known = list_cameras(model)
        unknown = [c for c in cameras if c not in known]
        if unknown:
            raise ValueError(f"unknown camera(s) {', '.join(unknown)} (this scene has: "
                             f"{', '.join(known)})")
        speed_up_visuals(model, image_size, antialias)
        self.cameras = list(cameras)
        ids = {c: mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in cameras}
        # Decided once, from the pose after the first reset: a per-frame decision could flip a
        # moving camera's image in the middle of an episode.
        self.rotate = {c: upside_down(data, ids[c]) for c in cameras}
        self._renderer = mujoco.Renderer(model, image_size, image_size)

    def render(self, data) -> dict[str, np.ndarray]:
        out = {}
        for cam in self.cameras:
            self._renderer.update_scene(data, camera=cam)
            img = self._renderer.render()
            out[cam] = np.ascontiguousarray(img[::-1, ::-1] if self.rotate[cam] else img)
        return out

    def close(self) -> None:
        # Closed explicitly: EGL contexts freed by the garbage collector at interpreter exit
        # print "Exception ignored" tracebacks.
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
