"""``build_optimizer``: the one way a run gets its optimizer set.

The caller hands in this rank's model chunks (bare modules, in model order, with the whole
model's parameter names), the ``optim`` config, and the process groups it made; the config's
``muon_mode`` picks where the optimizer state lives (see :mod:`.sets`). The caller never
branches on the mode: every set has the :class:`~.sets.OptimizerSet` interface.

With no groups (one process, plain modules) the set is the single-process Muon + AdamW, the
reference of the optimizer tests; a distributed run at world size 1 still passes its groups
and so runs the same code as at any size.
"""

from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from ..config import OptimConfig
from .distributed.layout import fused_layouts
from .distributed.optimizer_set import DistributedOptimizerSet
from .tp_matrices import TensorParallelMatrices
from .groups import OptimizerGroups
from .params import ParamSplit, resolve_auto_ns_dtype, split_parameters
from .sets import GradBuffer, OptimizerSet, ReplicatedOptimizerSet


def build_optimizer(
    chunks: nn.Module | Sequence[nn.Module],
    cfg: OptimConfig,
    total_steps: int,
    groups: Optional[OptimizerGroups] = None,
    *,
    grad_buffers: Optional[Sequence[GradBuffer]] = None,
    device_type: Optional[str] = None,
) -> OptimizerSet:
    """Build the Muon + AdamW optimizer set of this rank's model chunks.

    Args:
        chunks: a module, or this rank's pipeline chunks in model order; marks on parameters
            (``use_adamw``) steer the Muon/AdamW split; frozen parameters are left out.
        cfg: the ``optim`` section of the run config (``muon_mode``, ``muon_reduce``,
            ``muon_split_fused``, ``muon_tp_ns``, ``ns_variant``, ``muon_bucket_elems`` and the hyper-parameters).
        total_steps: optimizer steps of the whole run (end of the cosine decay).
        groups: this rank's process groups (``parallel.state.optimizer_groups``); ``None`` = one
            process and the single-process set whatever ``muon_mode`` says.
        grad_buffers: data-parallel wrappers of the chunks (one each), whose buffers hold the
            gradients; ``None`` reads ``param.grad``.
        device_type: ``cuda`` or ``cpu``, picks the Newton-Schulz dtype for ``ns_dtype=auto``;
            default: where the parameters are.

    Returns:
        An :class:`~.sets.OptimizerSet`.

    Raises:
        ValueError: no trainable parameters, chunks sharing parameter names, a number of
            grad buffers other than of chunks, or a bad setting.
    """
    chunks = list(chunks) if isinstance(chunks, (list, tuple)) else [chunks]
    if grad_buffers is not None and len(grad_buffers) != len(chunks):
        raise ValueError(f"build_optimizer: {len(grad_buffers)} grad buffers for {len(chunks)} model chunks")
    # Chunk names are the whole model's and chunks come in model order, so the concatenated
    # split is the single-process split restricted to this rank's parameters.
    named: dict[str, nn.Parameter] = {}
    split = ParamSplit([], [], [])
    for chunk in chunks:
        mine = {name: p for name, p in chunk.named_parameters() if p.requires_grad}
        if named.keys() & mine.keys():
            raise ValueError(f"model chunks share parameter names: {sorted(named.keys() & mine.keys())[:3]}")
        named.update(mine)
        part = split_parameters(chunk)
        for group in ("muon", "adamw_decay", "adamw_no_decay"):
            getattr(split, group).extend(getattr(part, group))
    if not named:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    ns_dtype = resolve_auto_ns_dtype(cfg.ns_dtype, device_type or next(iter(named.values())).device.type)

    def fused(tp: int) -> dict | None:
        if not cfg.muon_split_fused:
            return None
        return {n: f for chunk in chunks for n, f in fused_layouts(chunk, tp).items()}

    if groups is None:
        layouts = fused(1)
        return ReplicatedOptimizerSet(
            named, split, cfg, total_steps, ns_dtype,
            fused={n: f.whole for n, f in layouts.items()} if layouts is not None else None,
            ns_variant=cfg.ns_variant, grad_buffers=grad_buffers,
        )
    if cfg.muon_mode == "replicated":
        matrices = TensorParallelMatrices(groups.tp, groups.tp_rank, groups.tp_size)
        return ReplicatedOptimizerSet(
            named, split, cfg, total_steps, ns_dtype, groups=groups, matrices=matrices, grad_buffers=grad_buffers
        )
    return DistributedOptimizerSet(
        named, split, cfg, total_steps, ns_dtype, groups,
        mode=cfg.muon_mode, fused=fused(groups.tp_size), split_fused=cfg.muon_split_fused,
        ns_variant=cfg.ns_variant, grad_buffers=grad_buffers, bucket_elems=cfg.muon_bucket_elems,
        # gradients in DDP buffers can go to their homes; in param.grad they arrive reduced
        reduce=cfg.muon_reduce if grad_buffers is not None and cfg.muon_mode == "owner" else "all_reduce",
        tp_ns=cfg.muon_tp_ns,
        modules=chunks,
    )
