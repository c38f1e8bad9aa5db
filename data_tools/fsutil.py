"""Write-then-rename output folders.

Verbs that produce a folder in one go (synth) write into a temporary sibling and rename it
over the target at the end (build-shards does the same with a resumable staging folder, see
``buildplan``), so a crash or an input error never leaves a half-written dataset that a
later step could mistake for a complete one. The trade-off: the target is replaced as a whole,
so we only replace folders that look like our own output (a guard against ``--out ~``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator

from .errors import OutputExistsError


@contextlib.contextmanager
def staged_output(out: Path, looks_replaceable: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it becomes ``out``.

    ``looks_replaceable(out)`` decides whether an existing non-empty ``out`` may be replaced.
    On any exception the temporary folder is removed and a note goes to stderr.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not looks_replaceable(out):
        raise OutputExistsError(
            f"{out} exists, is not empty and does not look like output of this tool; "
            "refusing to replace it (choose another --out or remove it yourself)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"note: removed the partial output {tmp}; {out} was left unchanged",
              file=sys.stderr)
        raise
    # Move the old folder aside first so the target is never missing for long and a failed
    # rename leaves the previous output in place.
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
