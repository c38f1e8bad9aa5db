"""How a stopped run tells its launcher what happened.

A run that saved because it was asked to stop (a signal, its wall-time budget) exits with
:data:`EXIT_REQUEUE` (75, ``EX_TEMPFAIL``: "not finished, run me again"). torchrun reports any
failing worker as exit code 1, so the code alone does not reach a batch script through it; rank 0
therefore also writes an exit record to ``$WALLWM_EXIT_FILE`` when the launcher sets it (one line:
``finished``, ``requeue`` or ``failed``, the step and the reason). ``launch/pretrain.sh`` reads
it to decide whether to requeue the job.
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
