"""The whole optimizer state in single-process layout, built from pieces, and back.

The gathered checkpoint layout and the tests' reference hold the state dict of a
single-process optimizer set (whole TP=1 tensors, parameters named by the ``split`` lists).
Every such form is made here from the one pieces interface (:mod:`.interface`), never by a
path of its own: :func:`whole_state` reads it from any source of pieces (a sharded checkpoint,
or every rank's pieces gathered in memory by :func:`gather_whole_state`), and
:func:`as_source` turns a whole state back into a structure and a source, so that a gathered
checkpoint loads through the same ``load`` as a sharded one.
"""

from __future__ import annotations

from typing import Optional

import torch.distributed as dist
from torch import Tensor

from wallwm_pretrain.checkpoint.optim.by_name import by_name, from_by_name, merge_by_name
from wallwm_pretrain.checkpoint.optim.interface import optimizer_pieces
from wallwm_pretrain.checkpoint.optim.names import PREFIX, optim_name, split_optim_name
from wallwm_pretrain.checkpoint.pieces import MemorySource, Piece, PieceSource
from wallwm_pretrain.optim.sets import OptimizerSet

STRUCTURE_KEYS = ("split", "hparams", "schedulers")


def whole_state(structure: dict, source: PieceSource) -> dict:
    """The single-process state dict of the whole structure, every optimizer tensor of
    ``source`` read whole."""
    state: dict[str, dict] = {}
    for rest in source.keys(PREFIX):
        optimizer, param, key = split_optim_name(PREFIX + rest)
        shape = source.shape(PREFIX + rest)
        state.setdefault(optimizer, {}).setdefault(param, {})[key] = source.read(PREFIX + rest, [0] * len(shape), shape)
    named = dict(structure, state=state)
    return from_by_name(named, named["split"])


def as_source(state: dict) -> tuple[dict, MemorySource]:
    """``(structure, source)`` of a single-process state dict: each tensor one whole piece.

    Raises:
        ValueError: a state entry that is not a tensor (named).
    """
    named = by_name(state)
    pieces = []
    for optimizer, states in named["state"].items():
        for param, entries in states.items():
            for key, value in entries.items():
                if not isinstance(value, Tensor):
                    raise ValueError(f"optimizer state {optimizer}/{param}/{key} is not a tensor ({type(value).__name__})")
                pieces.append(Piece(optim_name(optimizer, param, key), tuple(value.shape), [0] * value.dim(), value))
    return {k: named[k] for k in STRUCTURE_KEYS}, MemorySource(pieces)


def merge_pieces(reports: list[tuple[dict, list[Piece]]], order: Optional[list[str]] = None) -> dict:
    """The single-process state dict from every rank's ``(structure, pieces)``
    (:meth:`~.interface.OptimizerPieces.save`), held in one process; ``order`` as
    :func:`gather_whole_state`.

    Raises:
        ValueError: pieces that do not cover a tensor (a rank's pieces missing).
    """
    merged = merge_by_name([dict(s, state={}) for s, _ in reports], order or [])
    return whole_state({k: merged[k] for k in STRUCTURE_KEYS}, MemorySource(p for _, ps in reports for p in ps))


def gather_whole_state(
    opt_set: OptimizerSet, order: Optional[list[str]] = None, dst: int = 0, group: Optional[dist.ProcessGroup] = None
) -> Optional[dict]:
    """The whole optimizer state of the run in single-process layout, on global rank ``dst``.

    A collective over ``group`` (default: every rank): each rank sends the pieces it would
    write into a sharded checkpoint, and ``dst`` puts them together.

    Args:
        order: parameter names in the single-process model's order; without it each group's
            names follow the ranks in rank order (the model's order unless pipeline ranks
            interleave, as with virtual pipeline chunks).
        dst: global rank that receives the state.
        group: the ranks whose pieces make the state.

    Returns:
        The state on ``dst``, None on the other ranks.

    Raises:
        ValueError: pieces that do not cover a tensor (a rank missing from ``group``).
    """
    structure, pieces = optimizer_pieces(opt_set).save()
    mine = (structure, [p._replace(tensor=p.tensor.detach().cpu()) for p in pieces])
    reports = [mine]
    if dist.is_initialized() and dist.get_world_size(group) > 1:
        reports = [None] * dist.get_world_size(group) if dist.get_rank() == dst else None
        dist.gather_object(mine, reports, dst=dst, group=group)
        if dist.get_rank() != dst:
            return None
    return merge_pieces(reports, order)
