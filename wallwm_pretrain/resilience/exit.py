"""How a stopped run tells its launcher what happened.

A run that saved because it was asked to stop (a signal, its wall-time budget) exits with
:data:`EXIT_REQUEUE` (75, ``EX_TEMPFAIL``: "not finished, run me again"). torchrun reports any
failing worker as exit code 1, so the code alone does not reach a batch script through it; rank 0
therefore also writes an exit record to ``$WALLWM_EXIT_FILE`` when the launcher sets it (one line:
``finished``, ``requeue`` or ``failed``, the step and the reason). ``launch/pretrain.sh`` reads
it to decide whether to requeue the job.

Under ``torchrun --max-restarts N`` (``launch/pretrain.sh``: ``MAX_RESTARTS``) a worker that
dies, or a rank that stops because a peer died, makes torchrun start every worker again,
within the budget; the new workers resume from the newest complete checkpoint. There an orderly
stop (saved on request) exits 0 instead of 75, or torchrun would take it for a failure and
start the workers again instead of letting the job end and be requeued; the exit record still
says ``requeue``. :func:`restart_attempt` tells a restarted worker which attempt it is and how
the previous one ended (its exit record, or none: a rank was killed before it could write one).
"""

from __future__ import annotations

import os
from pathlib import Path

EXIT_REQUEUE = 75
EXIT_FILE_ENV = "WALLWM_EXIT_FILE"


def write_exit_record(status: str, step: int, reason: str = "") -> None:
    """Write ``status step=N reason=...`` to ``$WALLWM_EXIT_FILE`` (nothing when unset)."""
    if status not in ("finished", "requeue", "failed"):
        raise ValueError(f"unknown exit status {status!r}")
    target = os.environ.get(EXIT_FILE_ENV)
    if not target:
        return
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{status} step={step} reason={reason.replace(' ', '_') or '-'}\n")
    os.replace(tmp, path)  # a reader never sees half a line


def restart_attempt() -> tuple[int, int, str] | None:
    """``(attempt, budget, how the previous attempt ended)`` for a worker that torchrun started
    again after a failure; None on a first start (or outside torchrun)."""
    try:
        attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
        budget = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        return None
    if attempt <= 0:
        return None
    before = ""
    target = os.environ.get(EXIT_FILE_ENV)
    if target:
        try:
            before = Path(target).read_text().strip()
        except OSError:
            pass
    return attempt, budget, before or "no exit record (a rank was killed or lost before it could write one)"


def stop_exit_code() -> int:
    """The exit code of a run that saved on request: 75, or 0 under torchrun restarts (see the
    module doc)."""
    try:
        restarts = int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    except ValueError:
        restarts = 0
    return 0 if restarts > 0 else EXIT_REQUEUE
