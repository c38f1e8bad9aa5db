"""A small deterministic simulated tabletop world that produces event-annotated episodes.

``world`` (kinematic scene and gripper), ``policy`` (scripted multi-event tasks and their
event spans), ``render`` (overhead and wrist cameras), ``captions`` (paraphrase templates per
caption level) and ``generate`` (episodes -> LeRobot v3.0 dataset + events.jsonl).
"""

from .generate import VIEWS, simulate_episode, synthesize

__all__ = ["VIEWS", "simulate_episode", "synthesize"]
