"""Requests to stop: signals (SIGUSR1 from Slurm's warning, SIGTERM from preemption or scancel)
and a wall-time deadline.

The signal handler only records the signal: saving inside a handler can deadlock (the
interrupted code may hold a lock, or sit inside a collective that the save would enter again).
The trainer reads :meth:`StopRequests.reason` at its step boundaries, all ranks agree on it
(:mod:`.agree`), and only then does everyone save and exit.

:class:`Deadline` turns a wall-time budget (``train.max_wall_time``, counted from the start of
the invocation) and the job's end time (``$WALLWM_JOB_END_TIME``, epoch seconds, which
``launch/pretrain.sh`` asks Slurm for) into a stop request, early enough for the longest save and
step measured so far plus ``train.exit_margin_s``. Before the first save is measured only the
step time and the margin are kept back, so the margin should cover one save.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional

JOB_END_ENV = "WALLWM_JOB_END_TIME"
HANDLED = (signal.SIGUSR1, signal.SIGTERM)


class StopRequests:
    """Installs flag-only handlers for SIGUSR1 and SIGTERM; :meth:`close` restores the old ones."""

    def __init__(self) -> None:
        self._received: Optional[str] = None
        self._previous: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():  # signal() works there only
            for sig in HANDLED:
                self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        # SIGTERM outranks SIGUSR1: the job is ending now, not in a while
        if self._received != "SIGTERM":
            self._received = name

    @property
    def reason(self) -> str:
        """The signal received so far ('SIGUSR1', 'SIGTERM') or ''."""
        return self._received or ""

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class Deadline:
    """When to stop for the wall clock: the earlier of start + budget and the job's end time.

    Args:
        budget_s: ``train.max_wall_time`` in seconds, or None.
        margin_s: seconds always kept back (``train.exit_margin_s``).
        start: monotonic start of the invocation (default: now).
    """

    def __init__(self, budget_s: Optional[float], margin_s: float, start: Optional[float] = None) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        start = now_mono if start is None else start
        ends = []
        if budget_s is not None:
            ends.append(start + budget_s)
        job_end = os.environ.get(JOB_END_ENV, "").strip()
        if job_end:
            try:
                ends.append(now_mono + float(job_end) - now_wall)
            except ValueError:
                raise ValueError(f"${JOB_END_ENV}={job_end!r} is not epoch seconds") from None
        self.end: Optional[float] = min(ends) if ends else None
        self.margin_s = margin_s
        self.longest_step_s = 0.0
        self.longest_save_s = 0.0

    def note_step(self, seconds: float) -> None:
        self.longest_step_s = max(self.longest_step_s, seconds)

    def note_save(self, seconds: float) -> None:
        self.longest_save_s = max(self.longest_save_s, seconds)

    @property
    def reserve_s(self) -> float:
        """Seconds kept back before the end: the next step, a save, the margin."""
        return self.longest_step_s + self.longest_save_s + self.margin_s

    def left_s(self) -> Optional[float]:
        """Seconds until the end (None = no deadline)."""
        return None if self.end is None else self.end - time.monotonic()

    def reached(self) -> bool:
        left = self.left_s()
        return left is not None and left <= self.reserve_s
