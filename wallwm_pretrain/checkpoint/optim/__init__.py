"""Optimizer state in checkpoints: names, the by-name structure, and the pieces of every
optimizer set kind behind one interface (:func:`optimizer_pieces`).

Importing this package registers every kind of set (:mod:`.replicated`, :mod:`.distributed`).
"""

from .interface import OptimizerPieces, optimizer_pieces
from .replicated import ReplicatedPieces
from .distributed import DistributedPieces
from .whole import as_source, gather_whole_state, merge_pieces, whole_state

__all__ = [
    "DistributedPieces",
    "OptimizerPieces",
    "ReplicatedPieces",
    "as_source",
    "gather_whole_state",
    "merge_pieces",
    "optimizer_pieces",
    "whole_state",
]
