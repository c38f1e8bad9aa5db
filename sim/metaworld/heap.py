"""Make uninitialised heap memory reproducible while recording, so MP4 files are byte-identical.

The H.264 encoding path (libx264 through PyAV) reads a few bytes of heap memory that nothing
wrote. In a fresh process those bytes come from new, zeroed pages, so the output looks
deterministic; once an OpenGL context (Mesa's llvmpipe and its threads) has allocated and
freed memory in the process, they hold leftovers that differ from run to run, and so do a
few macroblocks of the first frames. Rendered frames themselves are identical between runs.
glibc's M_PERTURB option fills every block handed out by malloc with a fixed byte, which
makes those reads reproducible at the cost of one memset per allocation. Elsewhere than glibc
this is a no-op and videos may differ in a few pixels between runs (decoded content almost
identical, states, actions and events still identical).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
from typing import Iterator

_M_PERTURB = -6  # from glibc's malloc.h
_PATTERN = 0x55


def _libc():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


@contextlib.contextmanager
def reproducible_heap() -> Iterator[bool]:
    """Within the block, fresh heap blocks are pre-filled; yields whether that is in effect."""
    libc = _libc()
    active = bool(libc is not None and libc.mallopt(_M_PERTURB, _PATTERN) == 1)
    try:
        yield active
    finally:
        if active:
            libc.mallopt(_M_PERTURB, 0)
