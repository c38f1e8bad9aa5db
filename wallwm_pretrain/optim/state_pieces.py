"""Optimizer state as pieces of canonical tensors, written and read where it lives.

A sharded checkpoint names each tensor of the canonical (single-process) optimizer state
``optim/<optimizer>/<parameter>/<key>`` (``optim/muon/<p>/momentum_buffer``,
``optim/adamw/<p>/exp_avg`` ...), with the parameter's whole (TP=1) shape; AdamW's step count
is a 0-d tensor. Every rank writes the pieces it holds, and exactly one rank writes each
element (data-parallel replicas and tensor-parallel copies of replicated tensors are left to
rank 0 of their group). The non-tensor part (name split, hyper-parameters per group kind,
scheduler state per group kind) is the by-name structure of :mod:`.state_by_name`.

This module covers :class:`~.sets.ReplicatedOptimizerSet` (one process, or tensor-parallel
slices laid out like their parameters); distributed Muon's owners and ZeRO shards are in
:mod:`.distributed.state_pieces`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from wallwm_pretrain.pieces import Piece, PieceSource, TensorView, is_whole, pieces_of, read_view, tp_view, whole
from wallwm_pretrain.optim.tp_matrices import is_tp_sharded
from wallwm_pretrain.optim.state_by_name import GROUPS, by_name, from_by_name

PREFIX = "optim/"


def optim_name(optimizer: str, param: str, key: str) -> str:
    """The checkpoint name of one canonical optimizer-state tensor."""
    return f"{PREFIX}{optimizer}/{param}/{key}"


def split_optim_name(name: str) -> tuple[str, str, str]:
    """``(optimizer, parameter, key)`` of :func:`optim_name` (parameter names hold no '/')."""
    optimizer, rest = name[len(PREFIX):].split("/", 1)
    param, key = rest.rsplit("/", 1)
    return optimizer, param, key


def param_view(name: str, p: Tensor, tp_rank: int, tp_size: int) -> TensorView:
    """Where a tensor laid out like parameter ``p`` (this rank's slice) sits in the whole one."""
    if tp_size > 1 and is_tp_sharded(p):
        return tp_view(name, p.shape, int(p.partition_dim), int(getattr(p, "partition_stride", 1)), tp_rank, tp_size)
    return whole(name, p.shape)


def writes(view: TensorView, dp_rank: int, tp_rank: int) -> bool:
    """Whether this rank writes its copy: data-parallel rank 0, and tensor-parallel rank 0 for
    tensors every tensor-parallel rank holds whole."""
    return dp_rank == 0 and (tp_rank == 0 or not is_whole(view))


def check_split(saved: dict[str, list[str]], mine: dict[str, list[str]]) -> None:
    """Raise unless every parameter of this rank is in the same group of the saved split."""
    for group in GROUPS:
        missing = sorted(set(mine[group]) - set(saved[group]))
        if missing:
            raise ValueError(
                f"optimizer state does not match the model: {len(missing)} parameters of group {group!r} "
                f"are not in the saved group (first 5: {missing[:5]})"
            )


def replicated_pieces(opt_set: Any) -> tuple[dict, list[Piece]]:
    """``(structure, pieces)`` of a :class:`~.sets.ReplicatedOptimizerSet` (no communication)."""
    named = by_name(opt_set.state_dict())
    g = opt_set.groups
    pieces: list[Piece] = []
    for optimizer, states in named["state"].items():
        for param, state in states.items():
            p = opt_set._params[param]
            for key, value in state.items():
                if not isinstance(value, Tensor):
                    raise ValueError(f"optimizer state {optimizer}/{param}/{key} is not a tensor ({type(value).__name__})")
                name = optim_name(optimizer, param, key)
                view = param_view(name, p, g.tp_rank, g.tp_size) if value.shape == p.shape else whole(name, value.shape)
                if writes(view, g.dp_rank, g.tp_rank):
                    pieces += pieces_of(view, value.detach())
    return {k: named[k] for k in ("split", "hparams", "schedulers")}, pieces


def read_param_state(
    source: PieceSource, optimizer: str, param: str, p: nn.Parameter, tp_rank: int, tp_size: int
) -> dict[str, Tensor]:
    """This rank's state tensors of ``param`` (its slice), every key the checkpoint holds."""
    out = {}
    for key in source.keys(optim_name(optimizer, param, "")):
        name = optim_name(optimizer, param, key)
        shape = source.shape(name)
        view = param_view(name, p, tp_rank, tp_size)
        if shape != view.global_shape:
            view = whole(name, shape)
        out[key] = read_view(view, source.read)
    return out


def load_replicated(opt_set: Any, structure: dict, source: PieceSource) -> None:
    """Load this rank's share into a :class:`~.sets.ReplicatedOptimizerSet` from a checkpoint."""
    mine = opt_set._split_lists()
    check_split(structure["split"], mine)
    g = opt_set.groups
    state: dict[str, dict] = {}
    for optimizer in opt_set.optimizers:
        kinds = ("muon",) if optimizer == "muon" else ("adamw_decay", "adamw_no_decay")
        state[optimizer] = {}
        for param in (n for k in kinds for n in mine[k]):
            got = read_param_state(source, optimizer, param, opt_set._params[param], g.tp_rank, g.tp_size)
            if got:
                state[optimizer][param] = got
    named = {"split": structure["split"], "hparams": structure["hparams"], "state": state,
             "schedulers": structure["schedulers"]}
    opt_set.load_state_dict(from_by_name(named, mine))
