"""Meta-World expert demonstrations as event-annotated episodes (LeRobot v3.0 + events.jsonl).

Meta-World's scripted experts (``metaworld.policies``) solve their tasks with a short chain
of phases (above the object, down to it, grasp, to the goal ...). Recording those phases
gives event boundaries that are exact by construction, on real MuJoCo physics and rendering,
at the cost of the experts' limited behaviour (no hesitation, one strategy per task; optional
action noise adds some spread). The simulator itself (headless OpenGL, environment, cameras,
per-task phases and captions) lives in :mod:`sim.metaworld`, shared with closed-loop
evaluation; this package keeps what is specific to recording: ``segment`` (phases -> events)
and ``record`` (the episode loop and the LeRobot writer).

Importing this package does not import mujoco or metaworld; ``record_metaworld`` does.
"""

from sim.metaworld.tasks import SPECS

from .record import RECORDING_FILE, RecordConfig, RecordingError, record_metaworld

__all__ = ["RECORDING_FILE", "RecordConfig", "RecordingError", "SPECS", "record_metaworld"]
