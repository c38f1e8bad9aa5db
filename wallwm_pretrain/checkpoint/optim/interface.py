"""One interface for every optimizer set's state in a checkpoint: :class:`OptimizerPieces`.

An optimizer set (``wallwm_pretrain.optim``) updates parameters and holds state; how that state
is named, cut into pieces of canonical tensors and found again is the checkpoint's business,
one layer up. :func:`optimizer_pieces` gives the :class:`OptimizerPieces` of a set: each set
kind registers its own (``optimizer_pieces.register``, in :mod:`.replicated` and
:mod:`.distributed`), so a new kind of set is one module here, and callers never ask which
kind they hold.
"""

from __future__ import annotations

from functools import singledispatch
from typing import Protocol

from wallwm_pretrain.checkpoint.pieces import Piece, PieceSource
from wallwm_pretrain.optim.sets import OptimizerSet


class OptimizerPieces(Protocol):
    """An optimizer set's state as pieces of the canonical (single-process) state."""

    def save(self) -> tuple[dict, list[Piece]]:
        """``(structure, pieces)`` this rank writes (no communication): the by-name structure
        of its pipeline rank (``split``, ``hparams``, ``schedulers``; see :mod:`.by_name`) and
        the pieces of the tensors this rank is the one to write (views of live tensors)."""

    def load(self, structure: dict, source: PieceSource) -> None:
        """Take this rank's share from the whole structure and a source of canonical tensors
        (any layout wrote them; no communication).

        Raises:
            ValueError: a parameter of this rank missing from the saved split or in another
                group, or a tensor whose saved shape does not fit (named).
        """


@singledispatch
def optimizer_pieces(opt_set: OptimizerSet) -> OptimizerPieces:
    """The checkpoint interface of ``opt_set``.

    Raises:
        TypeError: a kind of optimizer set no module registered.
    """
    raise TypeError(f"no checkpoint layout is registered for optimizer sets of type {type(opt_set).__name__}")
