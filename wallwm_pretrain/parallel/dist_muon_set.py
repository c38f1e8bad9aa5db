"""Distributed Muon + ZeRO-1 AdamW driven as one optimizer, with layout-free checkpoints.

:class:`DistMuonOptimizerSet` has the interface of ``ParallelOptimizerSet`` (``step``,
``zero_grad``, ``clip_grad_norm`` over the logical model, ``finish_grad_sync``, ``lrs``,
``param_groups_summary``) with :class:`~.dist_muon.DistMuon` for the hidden matrices and
:class:`~.dist_muon_adamw.ZeroAdamW` for the rest, both under the warmup + cosine schedule.

Checkpoints. :meth:`~DistMuonOptimizerSet.state_dict` is this rank's share (momentum of the
matrices it owns, its AdamW shards) plus the layout needed to rebuild whole tensors; it reloads
only under the same layout. :meth:`~DistMuonOptimizerSet.canonical_state_dict` gathers every
rank's share to one writer and merges it into exactly the layout of a single-process
``OptimizerSet.state_dict()`` (whole TP=1 tensors; parameters named by the ``split`` lists), and
:meth:`~DistMuonOptimizerSet.load_canonical_state_dict` gives each rank of any DP/TP/PP layout
its share of such a state. A single-process run and any distributed layout therefore resume
from one another. :func:`~.dist_muon_checkpoint.merge_sharded_states` does the merge offline from
per-rank files.

Trade-off: the writer holds the whole optimizer state while saving (as the canonical model
checkpoint already requires); per-rank files avoid that at the price of an offline merge.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

from wallwm_pretrain.config import OptimConfig
from wallwm_pretrain.optim import ParamSplit, resolve_auto_ns_dtype, split_parameters
from wallwm_pretrain.optim.build import muon_hyperparameters
from wallwm_pretrain.optim.schedule import build_scheduler
from wallwm_pretrain.parallel.dist_muon import DistMuon, MuonGroups
from wallwm_pretrain.parallel.dist_muon_adamw import ZeroAdamW
from wallwm_pretrain.parallel.dist_muon_checkpoint import (
    FORMAT,
    group_kinds,
    hyper_of,
    load_hyper,
    matching_adamw_groups,
    merge_sharded_states,
    scheduler_by_kind,
    scheduler_for,
)
from wallwm_pretrain.parallel.grad_norm import clip_by_global_norm, global_grad_norm
from wallwm_pretrain.parallel.muon_layout import FusedLayout, fused_layouts
from wallwm_pretrain.parallel.muon_plan import DEFAULT_BUCKET_ELEMS

class DistMuonOptimizerSet:
    """Distributed Muon + ZeRO-1 AdamW with schedules (see the module docstring).

    Args:
        named_params: this rank's trainable parameters by name (bare model names).
        split: which names go to Muon and to the two AdamW groups.
        cfg: the ``optim`` section of the run config.
        total_steps: optimizer steps of the whole run.
        ns_dtype: ``float32`` or ``bfloat16``.
        groups: the stage's process groups (:meth:`MuonGroups.from_megatron`).
        mode: ``owner``, ``gather`` or ``local`` (see :mod:`.dist_muon`).
        fused: fused row layouts by name; ``None`` finds none.
        split_fused: orthogonalise Q/K/V, gate/up, K/V separately.
        ns_variant: ``quintic`` or ``polar_express``.
        ddp: megatron DDP wrapper (or one per pipeline chunk) whose buffers
            (``param.main_grad``) hold the gradients; ``None`` reads ``param.grad``.
        model_parallel_group: group over which sliced gradients and stages add up in the norm
            (megatron's model-parallel group); ``None`` when tp * pp == 1.
        model_parallel_size: its size.
        bucket_elems: elements per Muon transfer bucket.
        overlap: overlap Muon transfers with Newton-Schulz.
    """

    def __init__(
        self,
        named_params: dict[str, nn.Parameter],
        split: ParamSplit,
        cfg: OptimConfig,
        total_steps: int,
        ns_dtype: str,
        groups: MuonGroups,
        mode: str = "owner",
        fused: Optional[dict[str, FusedLayout]] = None,
        split_fused: bool = True,
        ns_variant: str = "quintic",
        ddp: Any = None,
        model_parallel_group: Optional[dist.ProcessGroup] = None,
        model_parallel_size: int = 1,
        bucket_elems: int = DEFAULT_BUCKET_ELEMS,
        overlap: bool = True,
    ) -> None:
        self.split = split
        self._params = named_params
        self.groups = groups
        self.ddps = list(ddp) if isinstance(ddp, (list, tuple)) else ([ddp] if ddp is not None else [])
        self.mp_group, self.mp_size = model_parallel_group, model_parallel_size
        self._synced = False
        grad_fn = (lambda p: p.main_grad) if self.ddps else None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.muon: Optional[DistMuon] = None
        if split.muon:
            self.muon = DistMuon(
                {n: named_params[n] for n in split.muon},
                groups,
                **muon_hyperparameters(cfg, ns_dtype, ns_variant),
                mode=mode,
                fused=fused,
                split_fused=split_fused,
                bucket_elems=bucket_elems,
                overlap=overlap,
                grad_fn=grad_fn,
            )
            self.optimizers["muon"] = self.muon
        self.adamw: Optional[ZeroAdamW] = None
        if split.adamw_decay or split.adamw_no_decay:
            self.adamw = ZeroAdamW(
                named_params,
                [(split.adamw_decay, cfg.weight_decay), (split.adamw_no_decay, 0.0)],
                lr=cfg.adamw_lr,
                betas=(float(cfg.adamw_betas[0]), float(cfg.adamw_betas[1])),
                eps=cfg.adamw_eps,
                dp_group=groups.dp,
                dp_rank=groups.dp_rank,
                dp_size=groups.dp_size,
                tp_size=groups.tp_size,
                tp_rank=groups.tp_rank,
                pp_rank=groups.pp_rank,
                grad_fn=grad_fn,
            )
            self.optimizers["adamw"] = self.adamw.inner
        self.schedulers = {
            key: build_scheduler(opt, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
            for key, opt in self.optimizers.items()
        }

    # -- the loop -------------------------------------------------------------------------
    def finish_grad_sync(self) -> None:
        """Complete the data-parallel gradient reduction of this step (idempotent per step)."""
        if not self._synced:
            for ddp in self.ddps:
                ddp.finish_grad_sync()
        self._synced = True

    def _grad(self, p: Tensor) -> Optional[Tensor]:
        return p.main_grad if self.ddps else p.grad

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale all gradients so the norm of the logical model's gradient is <= ``max_norm``.

        Returns:
            The global norm before clipping (same on every rank).

        Raises:
            ValueError: a negative ``max_norm``.
        """
        if max_norm < 0:
            raise ValueError(f"max_norm must be >= 0 (0 disables clipping), got {max_norm}")
        self.finish_grad_sync()
        pairs = [(p, g) for p in self._params.values() if (g := self._grad(p)) is not None]
        device = next(iter(self._params.values())).device
        total = global_grad_norm(pairs, self.groups.tp_rank, self.mp_group, self.mp_size, device)
        clip_by_global_norm([g for _, g in pairs], total, max_norm)
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

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear all gradients, including DDP's buffers."""
        for p in self._params.values():
            if set_to_none or self.ddps:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        for ddp in self.ddps:
            ddp.zero_grad_buffer()
        self._synced = False

    def lrs(self) -> dict[str, float]:
        """Current (scheduled) learning rate per optimizer."""
        return {key: float(opt.param_groups[0]["lr"]) for key, opt in self.optimizers.items()}

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

    def param_groups_summary(self) -> dict[str, dict[str, int]]:
        """Tensor and element counts (this rank's pieces) per optimizer and AdamW group."""
        return self.split.summary(self._params)

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
            ValueError: a state saved under another layout or plan (use the canonical functions).
        """
        if state.get("format") != FORMAT:
            raise ValueError(f"not a distributed Muon shard (format {state.get('format')!r}, expected {FORMAT!r})")
        if state["split"] != self.state_dict()["split"]:
            raise ValueError("optimizer shard holds other parameters than this rank; load the canonical state")
        if self.muon is not None:
            self.muon.load_sharded_state(state["muon"])
            load_hyper(self.muon.param_groups, state["hyper"]["muon"])
        if self.adamw is not None:
            self.adamw.load_sharded_state(state["adamw"])
            load_hyper(self.adamw.inner.param_groups, state["hyper"]["adamw"])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])

    def canonical_state_dict(
        self, dst: int = 0, group: Optional[dist.ProcessGroup] = None, order: Optional[list[str]] = None
    ) -> Optional[dict]:
        """The whole optimizer state in single-process ``OptimizerSet`` layout, on rank ``dst``.

        A collective over ``group`` (default: all ranks, so every pipeline stage is included).

        Args:
            dst: global rank that receives the merged state.
            group: the ranks whose shares are merged.
            order: parameter names in the single-process model's order (see
                :func:`merge_sharded_states`).

        Returns:
            The state on ``dst``, None on the other ranks.
        """
        mine = self.state_dict()
        if not dist.is_initialized() or dist.get_world_size(group) == 1:
            return merge_sharded_states([mine], order)
        rank = dist.get_rank()
        everyone = [None] * dist.get_world_size(group) if rank == dst else None
        dist.gather_object(mine, everyone, dst=dst, group=group)
        return merge_sharded_states(everyone, order) if rank == dst else None  # type: ignore[arg-type]

    def load_canonical_state_dict(self, state: dict[str, Any]) -> None:
        """Take this rank's share of a single-process-layout state (from any layout).

        Args:
            state: :meth:`canonical_state_dict` output or ``OptimizerSet.state_dict()``; it may
                hold more parameters (other pipeline stages) than this rank.

        Raises:
            ValueError: a parameter of this rank missing from the state or in another group.
        """
        saved = state["split"]
        for group in ("muon", "adamw_decay", "adamw_no_decay"):
            missing = sorted(set(getattr(self.split, group)) - set(saved[group]))
            if missing:
                raise ValueError(
                    f"optimizer state does not match the model: {len(missing)} parameters of group {group!r} "
                    f"are not in the saved group (first 5: {missing[:5]})"
                )
        optimizers = state["optimizers"]
        if self.muon is not None:
            muon = optimizers["muon"]
            order = [i for g in muon["param_groups"] for i in g["params"]]
            by_idx = dict(zip(order, saved["muon"]))
            whole = {by_idx[i]: s["momentum_buffer"] for i, s in muon["state"].items()}
            self.muon.load_whole_momentum(whole)
            load_hyper(self.muon.param_groups, muon["param_groups"])
        if self.adamw is not None:
            adamw = optimizers["adamw"]
            name_groups = [g for g in (saved["adamw_decay"], saved["adamw_no_decay"]) if g]
            by_idx = {i: n for g, ns in zip(adamw["param_groups"], name_groups) for i, n in zip(g["params"], ns)}
            self.adamw.load_whole_state({by_idx[i]: s for i, s in adamw["state"].items()})
            load_hyper(self.adamw.inner.param_groups, matching_adamw_groups(adamw["param_groups"], saved, self.split))
        mine = {k: list(getattr(self.split, k)) for k in ("muon", "adamw_decay", "adamw_no_decay")}
        for key, sched in self.schedulers.items():
            common, per_kind = scheduler_by_kind(state["schedulers"][key], group_kinds(key, saved))
            sched.load_state_dict(scheduler_for(common, per_kind, group_kinds(key, mine)))


_WRAPPERS = ("GlobalBatchLoss", "StageModule")  # hold the model as `.model`


def _unwrap(model: nn.Module) -> tuple[nn.Module, Any]:
    """(bare model, megatron DDP wrapper or None), without importing the model package."""
    from megatron.core.distributed import DistributedDataParallel

    ddp = model if isinstance(model, DistributedDataParallel) else None
    bare = model.module if ddp is not None else model
    while type(bare).__name__ in _WRAPPERS:
        bare = bare.model
    return bare, ddp


def build_dist_muon_optimizer(
    model: nn.Module | list[nn.Module],
    cfg: OptimConfig,
    total_steps: int,
    device_type: str,
    groups: Optional[MuonGroups] = None,
    mode: str = "owner",
    split_fused: bool = True,
    ns_variant: str = "quintic",
    bucket_elems: int = DEFAULT_BUCKET_ELEMS,
    overlap: bool = True,
) -> DistMuonOptimizerSet:
    """Distributed Muon + ZeRO-1 AdamW for a (DDP-wrapped, tensor/pipeline-parallel) model.

    Args:
        model: what ``parallelize_model`` returned, this rank's list of pipeline chunks (each
            DDP-wrapped or not, in model order), or a bare model (gradients in ``p.grad``).
        cfg: the ``optim`` section of the run config.
        total_steps: optimizer steps of the whole run.
        device_type: ``cuda`` or ``cpu`` (picks the Newton-Schulz dtype for ``ns_dtype=auto``).
        groups: default :meth:`MuonGroups.from_megatron`.
        mode, split_fused, ns_variant, bucket_elems, overlap: see :class:`DistMuonOptimizerSet`.

    Raises:
        ValueError: no trainable parameters, chunks of which only some are DDP-wrapped, or a
            bad setting.
    """
    from megatron.core import parallel_state as ps

    chunks = [_unwrap(m) for m in (model if isinstance(model, (list, tuple)) else [model])]
    ddps = [d for _, d in chunks if d is not None]
    if ddps and len(ddps) != len(chunks):
        raise ValueError(f"build_dist_muon_optimizer: {len(ddps)} of {len(chunks)} chunks are DDP-wrapped; wrap all or none")
    named = {n: p for bare, _ in chunks for n, p in bare.named_parameters() if p.requires_grad}
    if not named:
        raise ValueError("build_dist_muon_optimizer: the model has no trainable parameters")
    splits = [split_parameters(bare) for bare, _ in chunks]
    split = ParamSplit(*([n for s in splits for n in getattr(s, k)] for k in ("muon", "adamw_decay", "adamw_no_decay")))
    groups = groups or MuonGroups.from_megatron()
    fused = {n: f for bare, _ in chunks for n, f in fused_layouts(bare, groups.tp_size).items()} if split_fused else None
    mp_size = ps.get_tensor_model_parallel_world_size() * ps.get_pipeline_model_parallel_world_size()
    return DistMuonOptimizerSet(
        named,
        split,
        cfg,
        total_steps,
        resolve_auto_ns_dtype(cfg.ns_dtype, device_type),
        groups,
        mode=mode,
        fused=fused,
        split_fused=split_fused,
        ns_variant=ns_variant,
        ddp=ddps or None,
        model_parallel_group=ps.get_model_parallel_group() if mp_size > 1 else None,
        model_parallel_size=mp_size,
        bucket_elems=bucket_elems,
        overlap=overlap,
    )
