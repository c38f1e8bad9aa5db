"""A :class:`~wallwm_pretrain.optim.sets.ReplicatedOptimizerSet`'s state as pieces.

Every rank holds the whole state of the parameters it holds, laid out like them (one process,
or tensor-parallel slices). Every rank writes the pieces it holds, and exactly one rank writes
each element (data-parallel replicas and tensor-parallel copies of replicated tensors are left
to rank 0 of their group). Loading reads each parameter's slice of every state tensor the
checkpoint holds for it.
"""

from __future__ import annotations

from torch import Tensor, nn

from wallwm_pretrain.checkpoint.optim.by_name import KINDS, by_name, from_by_name
from wallwm_pretrain.checkpoint.optim.interface import optimizer_pieces
from wallwm_pretrain.checkpoint.optim.names import check_split, optim_name
from wallwm_pretrain.checkpoint.pieces import Piece, PieceSource, pieces_of, read_view, whole
from wallwm_pretrain.checkpoint.views import param_view, writes
from wallwm_pretrain.optim.sets import ReplicatedOptimizerSet


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


class ReplicatedPieces:
    """The :class:`~.interface.OptimizerPieces` of a replicated set."""

    def __init__(self, opt_set: ReplicatedOptimizerSet) -> None:
        self.opt = opt_set

    def save(self) -> tuple[dict, list[Piece]]:
        opt = self.opt
        named = by_name(opt.state_dict())
        g = opt.groups
        pieces: list[Piece] = []
        for optimizer, states in named["state"].items():
            for param, state in states.items():
                p = opt.params[param]
                for key, value in state.items():
                    if not isinstance(value, Tensor):
                        raise ValueError(f"optimizer state {optimizer}/{param}/{key} is not a tensor ({type(value).__name__})")
                    name = optim_name(optimizer, param, key)
                    view = param_view(name, p, g.tp_rank, g.tp_size) if value.shape == p.shape else whole(name, value.shape)
                    if writes(view, g.dp_rank, g.tp_rank):
                        pieces += pieces_of(view, value.detach())
        return {k: named[k] for k in ("split", "hparams", "schedulers")}, pieces

    def load(self, structure: dict, source: PieceSource) -> None:
        opt = self.opt
        mine = opt.split_lists()
        check_split(structure["split"], mine)
        g = opt.groups
        state: dict[str, dict] = {}
        for optimizer in opt.optimizers:
            state[optimizer] = {}
            for param in (n for k in KINDS[optimizer] for n in mine[k]):
                got = read_param_state(source, optimizer, param, opt.params[param], g.tp_rank, g.tp_size)
                if got:
                    state[optimizer][param] = got
        named = {"split": structure["split"], "hparams": structure["hparams"], "state": state,
                 "schedulers": structure["schedulers"]}
        opt.load_state_dict(from_by_name(named, mine))


@optimizer_pieces.register
def _(opt_set: ReplicatedOptimizerSet) -> ReplicatedPieces:
    return ReplicatedPieces(opt_set)
