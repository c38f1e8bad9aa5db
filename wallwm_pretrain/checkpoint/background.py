"""At most one checkpoint write in flight, on a background thread.

``train.async_save=true``: the state is copied off the accelerator at the step boundary
(``sharded.copy_off``) and the writing, the commit and the pruning run on a thread while
training continues. A new save, the end of the run, and a stop requested by a signal or the
wall-time budget first wait for the write in flight (:meth:`BackgroundSave.wait`), so no two
saves overlap and the process never exits with a write half done. The commit is the same
scratch-folder rename as a synchronous save, so a crash during the background write leaves the
previous checkpoint the newest complete one.

The thread's collectives (the gather of piece tables, the broadcast of the outcome) use a
process group of their own, so they never interleave with the training step's collectives.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Optional


class BackgroundSave:
    """One background write at a time; its error is raised by the next :meth:`wait`."""

    def __init__(self) -> None:
        self._thread: Optional[threading.Thread] = None
        self._result: Optional[Path] = None
        self._error: Optional[BaseException] = None
        self.seconds = 0.0
        """Duration of the last finished write."""

    @property
    def in_flight(self) -> bool:
        return self._thread is not None

    def start(self, write: Callable[[], Path]) -> None:
        """Run ``write`` on a thread (after waiting for the previous one)."""
        self.wait()

        def run() -> None:
            started = time.perf_counter()
            try:
                self._result = write()
            except BaseException as exc:  # handed to the main thread by wait()
                self._error = exc
            finally:
                self.seconds = time.perf_counter() - started

        self._thread = threading.Thread(target=run, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def wait(self) -> Optional[Path]:
        """Wait for the write in flight, if any; returns its folder.

        Raises:
            Exception: what the write raised (a ``CheckpointError`` naming the failing rank).
        """
        if self._thread is None:
            return None
        self._thread.join()
        self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error
        return self._result
