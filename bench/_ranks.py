"""Start one process per rank of a benchmark's process group and wait for all of them."""

from __future__ import annotations


def run_ranks(procs: list, timeout: float, what: str) -> None:
    """Start ``procs``, wait up to ``timeout`` s for each, stop the survivors of a failure and
    raise SystemExit naming ``what`` and the exit codes."""
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    codes = [p.exitcode for p in procs]
    if any(c != 0 for c in codes):
        for p in procs:
            if p.is_alive():
                p.terminate()
        raise SystemExit(f"{what} failed: exit codes {codes}")
