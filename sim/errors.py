"""Error type of the simulator package.

A missing simulator, a missing OpenGL library or an unsupported task is a problem the user can
fix, so it raises :class:`SimError` (never ``assert``) with a message that names what to
install or what is supported. The command-line tools of both consumers catch it and print one
line instead of a traceback.
"""


class SimError(Exception):
    """Base class: the simulator cannot run as asked, for a reason the user can fix."""
