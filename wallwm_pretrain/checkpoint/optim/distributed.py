"""A ``DistributedOptimizerSet``'s state (distributed Muon, ZeRO-1 AdamW) as pieces of
canonical tensors, written and read where it lives.

Saving: a Muon home rank writes the momentum of the logical matrices it owns (``owner``
mode: the whole logical matrix, which for a part of a fused weight is one row block per group
of the canonical weight; a matrix orthogonalised in TP pieces, ``optim.muon_tp_ns=sharded``,
is written by every TP rank at the home's data-parallel index, its piece each); in ``gather``
and ``local`` modes data-parallel rank 0 writes its tensor-parallel piece of each logical
matrix. Each data-parallel rank writes the flat range of AdamW moments
its ZeRO shard holds, as boxes of the canonical tensors, and the rank whose shard holds a
parameter's first element writes its step count. Loading is the mirror image: a home reads
exactly the rows of its matrices, a ZeRO rank exactly its flat range, whatever layout wrote
them. No communication either way.
"""

from __future__ import annotations

import torch

from wallwm_pretrain.checkpoint.optim.by_name import group_kinds, scheduler_by_kind, scheduler_for
from wallwm_pretrain.checkpoint.optim.interface import optimizer_pieces
from wallwm_pretrain.checkpoint.optim.names import check_split, optim_name
from wallwm_pretrain.checkpoint.views import param_view
from wallwm_pretrain.optim.distributed.muon import DistMuon
from wallwm_pretrain.optim.distributed.optimizer_set import DistributedOptimizerSet, hyper_of, load_hyper
from wallwm_pretrain.optim.distributed.plan import LogicalMatrix
from wallwm_pretrain.checkpoint.pieces import (
    Piece,
    PieceSource,
    TensorView,
    compose,
    flat_pieces,
    fused_part_segments,
    pieces_of,
    read_flat,
    read_view,
    tp_segments,
    whole,
)

MOMENTUM = "momentum_buffer"
MOMENTS = ("exp_avg", "exp_avg_sq")


def momentum_view(muon: DistMuon, m: LogicalMatrix) -> TensorView:
    """Where this rank's momentum of logical matrix ``m`` sits in the canonical buffer."""
    name = optim_name("muon", m.name, MOMENTUM)
    if m.part < 0:
        dims = [((0, 0, m.rows),), ((0, 0, m.cols),)]
        shape = (m.rows, m.cols)
    else:
        f = muon.fused[m.name].whole
        dims = [fused_part_segments(f.groups, f.sizes, m.part), ((0, 0, m.cols),)]
        shape = (f.rows, m.cols)
    # gather and local modes keep TP pieces, and owner mode those of muon_tp_ns=sharded
    if (muon.mode != "owner" or m.key in muon.sharded_keys) and m.tp_dim is not None:
        g = muon.groups
        length = m.rows if m.tp_dim == 0 else m.cols
        dims[m.tp_dim] = compose(dims[m.tp_dim], tp_segments(length, m.stride, g.tp_rank, g.tp_size))
    return TensorView(name, shape, tuple(dims))


def _holds(muon: DistMuon, m: LogicalMatrix) -> bool:
    """Whether this rank is the one that writes (and reads) the momentum of ``m``."""
    g = muon.groups
    if muon.mode == "owner":
        return muon.holds(m, muon.tp_dp_rank)
    return g.dp_rank == 0 and (m.tp_dim is not None or g.tp_rank == 0)


def structure(opt_set: DistributedOptimizerSet) -> dict:
    """The by-name structure (split, hyper-parameters and schedulers per group kind)."""
    split = opt_set.split_lists()
    hparams, schedulers = {}, {}
    for key, opt in opt_set.optimizers.items():
        kinds = group_kinds(key, split)
        hparams.update({kind: hyper_of(group) for kind, group in zip(kinds, opt.param_groups)})
        common, per_group = scheduler_by_kind(opt_set.schedulers[key].state_dict(), kinds)
        schedulers[key] = {"common": common, "per_group": per_group}
    return {"split": split, "hparams": hparams, "schedulers": schedulers}


class DistributedPieces:
    """The :class:`~.interface.OptimizerPieces` of a distributed set."""

    def __init__(self, opt_set: DistributedOptimizerSet) -> None:
        self.opt = opt_set

    def save(self) -> tuple[dict, list[Piece]]:
        opt_set = self.opt
        pieces: list[Piece] = []
        muon = opt_set.muon
        if muon is not None:
            for m in muon.plan:
                t = muon.momentum.get(m.key)
                if t is not None and _holds(muon, m):
                    pieces += pieces_of(momentum_view(muon, m), t.detach())
        za = opt_set.adamw
        if za is not None:
            for f in za.flat:
                state = za.inner.state.get(f.value)
                if not state:
                    continue
                for i, src, dst, n in f.overlaps():
                    name, p = f.names[i], f.params[i]
                    replicated = za.layouts[name]["dim"] is None
                    if replicated and za.tp_rank != 0:
                        continue
                    for key in MOMENTS:
                        view = param_view(optim_name("adamw", name, key), p, za.tp_rank, za.tp_size)
                        pieces += flat_pieces(view, state[key].detach()[dst : dst + n], src)
                    if src == 0 and za.tp_rank == 0:
                        step = state["step"].detach().reshape(()).to(torch.float32)
                        pieces += pieces_of(whole(optim_name("adamw", name, "step"), ()), step)
        return structure(opt_set), pieces

    def load(self, saved: dict, source: PieceSource) -> None:
        opt_set = self.opt
        mine = opt_set.split_lists()
        check_split(saved["split"], mine)
        muon = opt_set.muon
        if muon is not None:
            muon.momentum = {}
            for m in muon.plan:
                name = optim_name("muon", m.name, MOMENTUM)
                shape = source.shape(name)
                if shape is None or (muon.mode == "owner" and not muon.holds(m, muon.tp_dp_rank)):
                    continue
                view = momentum_view(muon, m)
                if shape != view.global_shape:
                    raise ValueError(f"{name}: checkpoint shape {shape}, this model {view.global_shape}")
                p = muon.params[m.name]
                muon.momentum[m.key] = read_view(view, source.read).to(p.device, p.dtype).contiguous()
            load_hyper(muon.param_groups, [saved["hparams"]["muon"]])
        za = opt_set.adamw
        if za is not None:
            za.inner.state.clear()
            for f in za.flat:
                have = [source.shape(optim_name("adamw", n, "exp_avg")) is not None for n in f.names]
                if not any(have):
                    continue
                if not all(have):
                    missing = [n for n, h in zip(f.names, have) if not h][:5]
                    raise ValueError(f"AdamW state lacks parameters of its group, first 5: {missing}")
                flat = {key: torch.zeros_like(f.value) for key in MOMENTS}
                for i, src, dst, n in f.overlaps():
                    name, p = f.names[i], f.params[i]
                    for key in MOMENTS:
                        view = param_view(optim_name("adamw", name, key), p, za.tp_rank, za.tp_size)
                        if source.shape(view.name) != view.global_shape:
                            raise ValueError(f"{view.name}: checkpoint shape {source.shape(view.name)}, model {view.global_shape}")
                        flat[key][dst : dst + n] = read_flat(view, source.read, src, src + n).to(flat[key])
                step = source.read(optim_name("adamw", f.names[0], "step"), [], [])
                za.inner.state[f.value] = {"step": torch.tensor(float(step), dtype=torch.float32), **flat}
            kinds = group_kinds("adamw", mine)
            load_hyper(za.inner.param_groups, [saved["hparams"][k] for k in kinds])
        for key, sched in opt_set.schedulers.items():
            s = saved["schedulers"][key]
            sched.load_state_dict(scheduler_for(s["common"], s["per_group"], group_kinds(key, mine)))


@optimizer_pieces.register
def _(opt_set: DistributedOptimizerSet) -> DistributedPieces:
    return DistributedPieces(opt_set)
