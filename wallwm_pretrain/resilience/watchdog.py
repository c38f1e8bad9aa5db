"""Hung ranks: a watchdog thread per rank, with heartbeats in the run folder.

Each rank's loop marks where it is (:meth:`Watchdog.phase`: ``setup``, ``load``, ``data``,
``step``, ``save`` ...). Every ``parallel.heartbeat_s`` a daemon thread writes the rank's step,
phase and phase start to ``<run>/heartbeat/rank-NNNNN.json`` and reads its peers' files. It ends
the run (``os._exit(EXIT_WATCHDOG)``, after a message naming rank, step and phase) when

- this rank has been in one phase longer than its limit (``parallel.timeout_s``; saves and loads
  ``parallel.save_timeout_s``): a collective that never returns, a stuck data worker; or
- a peer's heartbeat is older than that peer's limit: the peer was stopped or killed, or hangs
  so hard that its own thread cannot run.

A rank blocked in a collective on a dead peer thus stops with a message that names the peer,
instead of waiting until the allocation ends. :meth:`Watchdog.describe_peers` gives the same
view for error messages of failed collectives.

Trade-offs: files instead of the process-group store, so heartbeats survive the store's host
dying and can be read by a person (``cat runs/NAME/heartbeat/*``), at the price of a small write
per rank per interval on the (shared) run folder; peers on different hosts are compared by wall
clock, so clocks must agree to well within the limits (NTP does that).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Optional

log = logging.getLogger("wallwm_pretrain")

EXIT_WATCHDOG = 70  # EX_SOFTWARE
LONG_PHASES = ("setup", "load", "save", "video_eval")


class PeerFailure(RuntimeError):
    """A collective failed (a peer died or timed out); the message names this rank, its step and
    phase, and what the peers' heartbeats last said."""


class Watchdog:
    """Heartbeat writer and checker of one rank (see the module docstring).

    Args:
        folder: the heartbeat folder (``<run>/heartbeat``), shared by all ranks.
        rank: this rank; ``world``: number of ranks.
        timeout_s: limit of a phase of a step; ``long_timeout_s``: of setup, load and save.
        interval_s: heartbeat period; 0 = no thread (phases are still recorded).
    """

    def __init__(self, folder: Path, rank: int, world: int, timeout_s: float, long_timeout_s: float,
                 interval_s: float) -> None:
        self.folder = Path(folder)
        self.rank, self.world = rank, world
        self.timeout_s, self.long_timeout_s, self.interval_s = timeout_s, long_timeout_s, interval_s
        self._step, self._phase, self._since = 0, "setup", time.time()
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        if interval_s > 0:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._beat()
            self._thread = threading.Thread(target=self._run, name=f"watchdog-rank{rank}", daemon=True)
            self._thread.start()

    def limit(self, phase: str) -> float:
        return self.long_timeout_s if phase in LONG_PHASES else self.timeout_s

    def phase(self, name: str, step: int) -> None:
        """This rank enters phase ``name`` of step ``step`` (cheap: I/O only when leaving a long
        phase, so that peers apply the short limit from now on, not one heartbeat later)."""
        leaving_long = self._phase in LONG_PHASES and name not in LONG_PHASES
        self._phase, self._step, self._since = name, step, time.time()
        if leaving_long and self._thread is not None:
            try:
                self._beat()
            except OSError as exc:
                log.warning("rank %d: heartbeat not written: %s", self.rank, exc)

    def close(self) -> None:
        """Stop the thread; the last heartbeat says ``exited`` so peers stop watching this rank."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(self.interval_s * 2, 1.0))
            self._phase = "exited"
            try:
                self._beat()
            except OSError:
                pass
            self._thread = None

    # -- the thread -------------------------------------------------------------------------
    def _file(self, rank: int) -> Path:
        return self.folder / f"rank-{rank:05d}.json"

    def _beat(self) -> None:
        record = {"rank": self.rank, "step": self._step, "phase": self._phase, "since": self._since,
                  "beat": time.time(), "pid": os.getpid(), "host": os.uname().nodename}
        tmp = self.folder / f".rank-{self.rank:05d}-{threading.get_ident()}.tmp"  # the thread or phase()
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self._file(self.rank))

    def peers(self) -> dict[int, dict]:
        """The last heartbeat of every other rank that has written one during this run."""
        out = {}
        for r in range(self.world):
            if r == self.rank:
                continue
            try:
                rec = json.loads(self._file(r).read_text())
            except (OSError, ValueError):
                continue
            if rec.get("beat", 0) >= self._started - 1.0 or rec.get("phase") != "exited":
                out[r] = rec
        return out

    def failure(self, exc: BaseException) -> PeerFailure:
        """``exc`` (a failed collective) as a :class:`PeerFailure` that says where every rank was."""
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return PeerFailure(f"rank {self.rank}: a collective failed at step {self._step} in phase {self._phase} "
                           f"({first}); peers: {self.describe_peers()}")

    def describe_peers(self) -> str:
        """One line per peer: its step, phase and the age of its heartbeat."""
        now = time.time()
        lines = []
        for r, rec in sorted(self.peers().items()):
            lines.append(f"rank {r} ({rec.get('host', '?')} pid {rec.get('pid', '?')}): step {rec.get('step')}, "
                         f"phase {rec.get('phase')} for {now - rec.get('since', now):.0f} s, heartbeat "
                         f"{now - max(rec.get('beat', 0), self._started):.0f} s ago")
        return "; ".join(lines) or "no peer heartbeats"

    def check(self) -> Optional[str]:
        """The reason to stop the run now, or None.

        A silent peer is named first: when this rank is stuck because a peer stopped (the usual
        cause of a wait in a collective), both limits run out at about the same time, and the
        peer is the one to look at.
        """
        now = time.time()
        for r, rec in self.peers().items():
            if rec.get("phase") == "exited":
                continue
            age = now - max(float(rec.get("beat", 0)), self._started)
            if age > self.limit(str(rec.get("phase"))):
                return (f"rank {r} ({rec.get('host', '?')} pid {rec.get('pid', '?')}) stopped answering: last "
                        f"heartbeat {age:.0f} s ago at step {rec.get('step')} in phase {rec.get('phase')} "
                        f"(this is rank {self.rank}, at step {self._step} in phase {self._phase})")
        if self._phase != "exited" and now - self._since > self.limit(self._phase):
            return (f"rank {self.rank} stuck in phase {self._phase} of step {self._step} for "
                    f"{now - self._since:.0f} s (limit {self.limit(self._phase):.0f} s); peers: {self.describe_peers()}")
        return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self._beat()
            except OSError as exc:  # a full or vanished run folder must not kill training by itself
                log.warning("rank %d: heartbeat not written: %s", self.rank, exc)
            problem = self.check()
            if problem and not self._stop.is_set():
                print(f"error: watchdog: {problem}", file=sys.stderr, flush=True)
                log.error("watchdog: %s", problem)
                os._exit(EXIT_WATCHDOG)
