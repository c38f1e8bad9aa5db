"""Reasoning traces: the text Staircase decoding's frozen small LM reconstructs from the latents.

One trace per conditioner observation, written from the event hierarchy around it::

    Task: {task}. Done: {last done captions, '; '-joined, or 'nothing'}. Now: {the event in
    progress}. Next: {the event after it, or 'nothing'}. Why: to {the enclosing event one level
    up, or the task}.

At most :data:`DONE_LISTED` done events are named (the most recent, after an ``(n earlier)``
count), so the trace stays short however long the episode is. A dataset may carry its own trace
per event (the optional ``reasoning`` field of ``events.jsonl``); ``build-conditioner`` then uses
that text for every observation of the event instead.
"""

from __future__ import annotations

DONE_LISTED = 3


def _sentence(text: str) -> str:
    return text.strip().rstrip(".")


def reasoning_trace(task: str, done: list[str], caption: str, next_caption: str, why: str) -> str:
    """The trace of one observation (module docstring); ``why`` is the enclosing event's caption
    ("" for none: the task is named instead)."""
    if done:
        earlier = len(done) - DONE_LISTED
        listed = "; ".join(_sentence(d) for d in done[-DONE_LISTED:])
        done_text = f"({earlier} earlier) {listed}" if earlier > 0 else listed
    else:
        done_text = "nothing"
    goal = _sentence(why) or _sentence(task) or "finish the task"
    return (f"Task: {_sentence(task) or 'nothing'}. Done: {done_text}. Now: {_sentence(caption)}. "
            f"Next: {_sentence(next_caption) or 'nothing'}. Why: to {goal}.")
