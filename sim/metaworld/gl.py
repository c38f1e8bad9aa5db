"""Headless OpenGL for MuJoCo: pick a backend, import Meta-World, prove that rendering works.

MuJoCo reads ``MUJOCO_GL`` exactly once, when ``mujoco`` is first imported, and a missing GL
library then fails inside that import with an unhelpful PyOpenGL error. So the backend is
chosen here, before anything imports ``mujoco`` or ``metaworld``: the user's ``MUJOCO_GL`` if
set, else EGL when libEGL is present (Mesa's software rasteriser on a CPU machine, the vendor
driver on a GPU node), else OSMesa when libOSMesa is present. Every failure is turned into a
SimError that names the pip requirement or the Debian packages to install. The trade-off:
one process renders with one backend; switching needs a new process.
"""

from __future__ import annotations

import ctypes.util
import importlib
import importlib.util
import os
import sys

from ..errors import SimError

PIP_REQUIREMENTS = ("metaworld==3.1.1", "packaging")
# Debian/Ubuntu packages that provide each backend's libraries (dependencies such as
# libegl-mesa0, libgbm1 and libllvm come with them).
APT_PACKAGES = {
    "egl": ("libegl1", "libopengl0", "libgl1-mesa-dri"),
    "osmesa": ("libosmesa6",),
}
_LIBRARY = {"egl": "EGL", "osmesa": "OSMesa"}


class MetaWorldUnavailable(SimError):
    """The metaworld package (or mujoco) cannot be imported."""


class RenderingUnavailable(SimError):
    """No headless OpenGL backend works in this process."""


def pip_hint() -> str:
    quoted = " ".join(f"'{r}'" for r in PIP_REQUIREMENTS)
    return f"pip install {quoted} (mujoco 3.3.0 comes with it)"


def apt_hint(backend: str) -> str:
    pkgs = " ".join(APT_PACKAGES.get(backend, APT_PACKAGES["egl"]))
    return (f"install the Debian package(s) {pkgs} "
            f"(as root: apt-get update && apt-get install -y {pkgs})")


def choose_backend() -> str:
    """The backend MuJoCo will use in this process; sets MUJOCO_GL when the user has not."""
    chosen = os.environ.get("MUJOCO_GL", "").strip().lower()
    if chosen:
        return chosen
    if "mujoco" in sys.modules:
        # Already imported without MUJOCO_GL: it settled on GLFW, which needs a display.
        return "glfw"
    backend = "egl"
    if ctypes.util.find_library("EGL") is None and ctypes.util.find_library("OSMesa") is not None:
        backend = "osmesa"
    os.environ["MUJOCO_GL"] = backend
    return backend


def _library_missing(backend: str) -> bool:
    lib = _LIBRARY.get(backend)
    return lib is not None and ctypes.util.find_library(lib) is None


def import_metaworld():
    """Import mujoco (with a headless backend) and metaworld; returns the metaworld module."""
    missing = [m for m in ("mujoco", "metaworld") if importlib.util.find_spec(m) is None]
    backend = choose_backend()
    if missing:
        gl_note = ""
        if _library_missing(backend):
            gl_note = f"; headless rendering will also need: {apt_hint(backend)}"
        raise MetaWorldUnavailable(
            f"Python package(s) {', '.join(missing)} not installed: {pip_hint()}{gl_note}")
    try:
        importlib.import_module("mujoco")
    except Exception as exc:  # PyOpenGL raises AttributeError/ImportError when libGL* is absent
        raise RenderingUnavailable(
            f"importing mujoco with MUJOCO_GL={backend} failed ({type(exc).__name__}: {exc}); "
            f"{apt_hint(backend)}") from None
    try:
        return importlib.import_module("metaworld")
    except ModuleNotFoundError as exc:
        raise MetaWorldUnavailable(f"importing metaworld failed: module {exc.name!r} is missing; "
                                   f"{pip_hint()}") from None


def check_rendering() -> str:
    """Render one tiny frame; returns the backend or raises RenderingUnavailable naming packages."""
    import_metaworld()
    import mujoco

    backend = os.environ.get("MUJOCO_GL", "glfw").strip().lower()
    if backend not in APT_PACKAGES:
        raise RenderingUnavailable(
            f"MUJOCO_GL={backend} is not a headless backend; run with MUJOCO_GL=egl "
            f"({apt_hint('egl')}) or MUJOCO_GL=osmesa ({apt_hint('osmesa')})")
    # A red box seen by a camera straight above it: the centre pixel must come out red.
    model = mujoco.MjModel.from_xml_string(
        "<mujoco><worldbody><light pos='0 0 3'/><camera name='c' pos='0 0 5'/>"
        "<geom type='box' size='1 1 1' rgba='1 0 0 1'/></worldbody></mujoco>")
    data = mujoco.MjData(model)
    mujoco.mj_forward(model, data)
    try:
        renderer = mujoco.Renderer(model, 16, 16)
    except Exception as exc:
        raise RenderingUnavailable(
            f"MuJoCo could not open a headless {backend.upper()} context "
            f"({type(exc).__name__}: {exc}); {apt_hint(backend)}") from None
    try:
        renderer.update_scene(data, camera="c")
        image = renderer.render()
    finally:
        renderer.close()
    red, green = int(image[8, 8, 0]), int(image[8, 8, 1])
    if image.shape != (16, 16, 3) or red <= green:
        raise RenderingUnavailable(f"MUJOCO_GL={backend} rendered a wrong image (centre pixel "
                                   f"{image[8, 8].tolist()}, expected red); {apt_hint(backend)}")
    return backend
