"""Distributed Muon + ZeRO-1 AdamW driven as one optimizer set, with layout-free checkpoints.

:class:`DistributedOptimizerSet` is the ``owner`` and ``gather`` modes of ``optim.muon_mode``:
the :class:`~wallwm_pretrain.optim.sets.OptimizerSet` interface over
:class:`~.muon.DistMuon` for the hidden matrices and :class:`~.adamw.ZeroAdamW` for the rest,
both under the warmup + cosine schedule. Gradients, clipping, zeroing and summaries are the
shared :class:`~wallwm_pretrain.optim.sets.OptimizerSetBase`.

Checkpoints. :meth:`~DistributedOptimizerSet.state_dict` is this rank's share (momentum of the
matrices it owns, its AdamW shards) plus the layout needed to rebuild whole tensors; it reloads
only under the same layout. A checkpoint that any DP/TP/PP layout (and a single process)
resumes from is written and read as pieces of the single-process state by
``wallwm_pretrain.checkpoint.optim.distributed``, from the ownership plan and shard ranges
this set holds.

Reduce-to-home (``reduce="home"``, ``optim.muon_reduce``; owner mode on megatron DDP buffers):
the Muon matrices' gradients go straight to their homes during backward
(:class:`~.home_reduce.HomeReduce`) and the AdamW gradients are reduce-scattered into their
ZeRO-1 shards (:class:`~.shard_reduce.ShardReduce`), so the whole step moves the all-reduce
bound (plus what Newton-Schulz on TP pieces needs); the global gradient norm is summed from
the homes' whole matrices and the AdamW shards (one all-reduce of a scalar), and with
``modules`` the orthogonalised updates land just before the forward of the module that holds
them (forward pre-hooks; :meth:`~DistributedOptimizerSet.finish_param_sync` lands all of them).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from wallwm_pretrain.optim.distributed.adamw import ZeroAdamW
from wallwm_pretrain.optim.distributed.home_reduce import HomeReduce
from wallwm_pretrain.optim.distributed.layout import FusedLayout
from wallwm_pretrain.optim.distributed.muon import DistMuon
from wallwm_pretrain.optim.distributed.plan import DEFAULT_BUCKET_ELEMS
from wallwm_pretrain.optim.distributed.shard_reduce import ShardReduce
from wallwm_pretrain.optim.grad_norm import clip_by_global_norm
from wallwm_pretrain.optim.sets import OptimizerSetBase

REDUCE_MODES = ("home", "all_reduce")
FORMAT = "wallwm-dist-muon/1"  # this rank's share (state_dict), reloaded under the same layout only


def hyper_of(group: dict) -> dict:
    """A param group's hyper-parameters (everything but its parameters)."""
    return {k: v for k, v in group.items() if k != "params"}


def load_hyper(mine: list[dict], saved: list[dict]) -> None:
    """Copy saved hyper-parameters (lr, initial_lr, ...) into this rank's param groups."""
    for g, s in zip(mine, saved):
        g.update({k: v for k, v in s.items() if k != "params"})


class DistributedOptimizerSet(OptimizerSetBase):
    """Distributed Muon + ZeRO-1 AdamW with schedules (see the module docstring).

    Args:
        *common, **common_kw: as :class:`~wallwm_pretrain.optim.sets.OptimizerSetBase`
            (parameters, split, config, steps, Newton-Schulz dtype, groups, grad buffers,
            Newton-Schulz variant); ``groups`` is required here.
        mode: ``owner``, ``gather`` or ``local`` (see :mod:`.muon`).
        fused: fused row layouts by name; ``None`` finds none.
        split_fused: orthogonalise Q/K/V, gate/up, K/V separately.
        bucket_elems: elements per Muon transfer bucket.
        overlap: overlap Muon transfers with Newton-Schulz.
        tp_ns: ``optim.muon_tp_ns`` (owner mode): ``gather`` or ``sharded`` (see :mod:`.sharded_ns`).
        reduce: ``all_reduce`` (gradients arrive reduced on every rank) or ``home`` (owner mode
            with ``grad_buffers``: Muon gradients reduced to their homes, AdamW gradients
            reduce-scattered into their shards, see the module docstring).
        modules: the model chunks holding the parameters; with ``reduce="home"`` each module
            that holds Muon parameters waits for their update just before its forward.

    Raises:
        ValueError: ``reduce="home"`` outside owner mode or without megatron DDP buffers.
    """

    def __init__(
        self,
        *common,
        mode: str = "owner",
        fused: Optional[dict[str, FusedLayout]] = None,
        split_fused: bool = True,
        bucket_elems: int = DEFAULT_BUCKET_ELEMS,
        overlap: bool = True,
        reduce: str = "all_reduce",
        tp_ns: str = "gather",
        modules: Optional[Sequence[nn.Module]] = None,
        **common_kw,
    ) -> None:
        super().__init__(*common, **common_kw)
        params, split, groups, grad_fn = self._params, self.split, self.groups, self._grad_fn()
        if reduce not in REDUCE_MODES:
            raise ValueError(f"optim.muon_reduce must be one of {REDUCE_MODES}, got {reduce!r}")
        if reduce == "home" and (mode != "owner" or not self.grad_buffers):
            raise ValueError(
                f"optim.muon_reduce=home reduces gradients inside megatron DDP in owner mode; got "
                f"muon_mode={mode!r} with {len(self.grad_buffers)} DDP buffers (use muon_reduce=all_reduce)"
            )
        self.muon: Optional[DistMuon] = None
        self.home: Optional[HomeReduce] = None
        self.shards: Optional[ShardReduce] = None
        self._hooks: list = []
        home = reduce == "home"
        if split.muon:
            self.muon = DistMuon(
                {n: params[n] for n in split.muon}, groups, mode=mode, fused=fused, split_fused=split_fused,
                bucket_elems=bucket_elems, overlap=overlap, grad_fn=grad_fn,
                home_grads={} if home else None, defer_return=home and modules is not None, tp_ns=tp_ns,
                **self.muon_hyper,
            )
            self.optimizers["muon"] = self.muon
        self.adamw: Optional[ZeroAdamW] = None
        if split.adamw_decay or split.adamw_no_decay:
            self.adamw = ZeroAdamW(
                params, self.adamw_groups, **self.adamw_hyper,
                dp_group=groups.dp, dp_rank=groups.dp_rank, dp_size=groups.dp_size,
                tp_size=groups.tp_size, tp_rank=groups.tp_rank, pp_rank=groups.pp_rank, grad_fn=grad_fn,
            )
            self.optimizers["adamw"] = self.adamw.inner
        if home:
            if self.adamw is not None:
                # the norm sums the squares in parameter order, as over whole gradients before the
                # shards: one process then gives the very same norm (a float sum depends on order)
                self.shards = ShardReduce(self.adamw, self.grad_buffers, param_order=list(self._params))
            self.home = HomeReduce(self.muon, self.grad_buffers, self.shards)
            if self.muon is not None:
                self.home.reduced = self.muon.home_grads  # one dict: filled by the reduce, read by the step
                if modules is not None:
                    self._wait_before_forward(modules)
        self._build_schedulers()

    def _wait_before_forward(self, modules: Sequence[nn.Module]) -> None:
        """A forward pre-hook on every module that holds Muon parameters itself: it lands their
        updates, so the return of step k overlaps the forward of step k+1 up to that module."""
        muon = self.muon
        by_id = {id(p): n for n, p in muon.params.items()}
        for chunk in modules:
            for module in chunk.modules():
                names = {by_id[id(p)] for p in module.parameters(recurse=False) if id(p) in by_id}
                if names:
                    self._hooks.append(module.register_forward_pre_hook(
                        lambda _module, _args, names=names: muon.finish_param_sync(names)
                    ))

    def finish_param_sync(self) -> None:
        """Land every Muon update still in flight (before parameters are read outside forward)."""
        if self.muon is not None:
            self.muon.finish_param_sync()

    def finish_grad_sync(self) -> None:
        """Complete the step's gradient reduction: DDP's buckets, then the reduce-to-home."""
        super().finish_grad_sync()
        if self.home is not None:
            self.home.wait()

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self.home is not None:
            self.home.clear()

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """As :meth:`OptimizerSetBase.clip_grad_norm`; with reduce-to-home the squares come from
        the homes' whole Muon matrices (or, with ``tp_ns`` sharded, the pieces their TP ranks
        keep; each counted once in the TP x DP group) and from the AdamW shards' reduced gradients
        (each data-parallel rank its shard, tensor-parallel rank 0 unless sliced), summed by
        one all-reduce of a scalar over all ranks."""
        if self.home is None:
            return super().clip_grad_norm(max_norm)
        if max_norm < 0:
            raise ValueError(f"max_norm must be >= 0 (0 disables clipping), got {max_norm}")
        self.finish_grad_sync()
        g = self.groups
        homes = list(self.home.reduced.values())
        counted = homes + (self.shards.grad_pieces(g.tp_rank) if self.shards is not None else [])
        squares = [torch.linalg.vector_norm(t, dtype=torch.float32).square() for t in counted]
        device = next(iter(self._params.values())).device
        sq = torch.stack(squares).sum() if squares else torch.zeros((), dtype=torch.float32, device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sq)  # every rank of the run: pipeline, TP and DP ranks each add their part
        total = sq.sqrt()
        clip_by_global_norm(homes + (self.shards.shard_grads() if self.shards is not None else []), total, max_norm)
        return float(total)

    def step(self) -> None:
        """One update of every parameter, then advance the schedules (a collective)."""
        self.finish_grad_sync()
        try:
            if self.muon is not None:
                self.muon.step()
            if self.adamw is not None:
                self.adamw.step()
            for sched in self.schedulers.values():
                sched.step()
        finally:
            self._synced = False

    @property
    def ns_calls(self) -> dict[str, int]:
        """Newton-Schulz orthogonalisations made on this rank, per logical matrix."""
        return dict(self.muon.ns_calls) if self.muon is not None else {}

    def state_numel(self) -> dict[str, int]:
        """Optimizer-state elements held by this rank: Muon momentum and AdamW moments."""
        return {
            "muon": self.muon.state_numel() if self.muon is not None else 0,
            "adamw": self.adamw.state_numel() if self.adamw is not None else 0,
        }

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """This rank's share of the state with its layout (no communication)."""
        return {
            "format": FORMAT,
            "pp_rank": self.groups.pp_rank,
            "split": {
                "muon": list(self.split.muon),
                "adamw_decay": list(self.split.adamw_decay),
                "adamw_no_decay": list(self.split.adamw_no_decay),
            },
            "hyper": {key: [hyper_of(g) for g in opt.param_groups] for key, opt in self.optimizers.items()},
            "muon": self.muon.sharded_state() if self.muon is not None else None,
            "adamw": self.adamw.sharded_state() if self.adamw is not None else None,
            "schedulers": {key: sched.state_dict() for key, sched in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Reload :meth:`state_dict` of the same rank under the same layout (no communication).

        Raises:
            ValueError: a state saved under another layout or plan (load a checkpoint instead).
        """
        if state.get("format") != FORMAT:
            raise ValueError(f"not a distributed Muon shard (format {state.get('format')!r}, expected {FORMAT!r})")
        if state["split"] != self.state_dict()["split"]:
            raise ValueError("optimizer shard holds other parameters than this rank; load a checkpoint instead")
        if self.muon is not None:
            self.muon.load_sharded_state(state["muon"])
            load_hyper(self.muon.param_groups, state["hyper"]["muon"])
        if self.adamw is not None:
            self.adamw.load_sharded_state(state["adamw"])
            load_hyper(self.adamw.inner.param_groups, state["hyper"]["adamw"])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])
