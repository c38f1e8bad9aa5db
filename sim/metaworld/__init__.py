"""Meta-World as the recorder and the evaluator both use it.

Modules: ``gl`` (headless OpenGL and install hints), ``env`` (one task's environment, its
scripted expert and seeded layouts, the state layouts), ``render`` (cameras, upright, fast
software rendering), ``tasks`` and ``tasks_extra`` (each task's expert phases, subtasks and
caption templates; ``tasks.SPECS`` is the registry), ``taskspec`` (the ``TaskSpec`` they
fill in) and ``heap`` (reproducible uninitialised heap memory, for byte-identical videos).

Importing this package does not import mujoco or metaworld; constructing a ``TaskEnv`` does.
"""

from .tasks import SPECS, TaskSpec, get_spec

__all__ = ["SPECS", "TaskSpec", "get_spec"]
