"""The conditioner's prompt: what the frozen VLM is told besides what the cameras show.

One plain-text turn, the same in training and at inference: the task instruction (the L3
caption), the captions of the events already done (the most recent ``max_done``, oldest
first) and the question. The VLM's own processor puts the camera views in front of it
(``vlm.py``). Plain text rather than a chat exchange: the heads read the VLM's hidden states,
not its generated answer, so nothing depends on the assistant turn a chat model expects.
"""

from __future__ import annotations

QUESTION = "What is the next event?"


def build_prompt(task: str, done: list[str], max_done: int) -> str:
    """``Task: ... Done: a; b. What is the next event?`` (``Done: nothing.`` when none)."""
    kept = list(done)[-max_done:] if max_done > 0 else []
    listed = "; ".join(c.strip() for c in kept if c.strip()) or "nothing"
    skipped = len(done) - len(kept)
    more = f" ({skipped} earlier)" if skipped > 0 else ""
    return f"Task: {task.strip()}. Done{more}: {listed}. {QUESTION}"
