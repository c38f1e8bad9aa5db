"""Tensor- and data-parallel training of :class:`WallWM`: the API the trainer calls.

Tensor parallel needs no wrapping: built with the groups of :func:`init_parallel`
(``ctx.pg_collection``), the model's megatron-core layers already hold this rank's attention
heads and FFN width, and everything else (norms, AdaLN, embeddings, heads) is replicated with
identical gradients on all TP ranks.
Data parallel wraps the model in megatron-core's ``DistributedDataParallel`` (contiguous,
bucketed gradient buffers; the all-reduce overlaps backward on GPU), around
:class:`GlobalBatchLoss`, which makes each rank's loss its share of the global-batch loss.
The optimizer is the usual Muon + AdamW set with three changes: Muon orthogonalises a
TP-sharded matrix whole (:mod:`.tp_matrices`), gradients come from DDP's buffers, and the
clipping norm is global over model-parallel ranks (:mod:`.grad_norm`).

Calling sequence (every rank runs the same code)::

    ctx = init_parallel(cfg.parallel.tp, cfg.parallel.pp, cfg.train.device, cfg.train.seed)
    validate_tensor_parallel(cfg.model, ctx.tp)           # before building: clear errors
    torch.manual_seed(cfg.train.seed)                     # same seed on every rank
    model = WallWM(cfg.model, ..., pg_collection=ctx.pg_collection)  # this rank's TP slices,
    model = model.to(ctx.device)                          # same init on every TP layout
    model = parallelize_model(model, ctx)                 # DDP(GlobalBatchLoss(model))
    optim = build_parallel_optimizer(model, cfg.optim, cfg.train.steps, ctx)
    noise_rng = flow_noise_generator(cfg.train.seed, ctx) # same draws on TP peers
    loop:
        batch = this DP rank's part of the global batch (loader with ctx.dp_rank, ctx.dp)
        out = model(batch.frames, ..., batch.caption, generator=noise_rng)
        out["loss"].backward()          # no extra scaling: ranks' shares add up over DP
        norm = optim.clip_grad_norm(cfg.optim.grad_clip)  # finishes the DP grad sync first
        optim.step()
        optim.zero_grad()               # also zeroes DDP's gradient buffers
        log float(out["loss"]), out["loss_video"], out["loss_action"]: global-batch values

``optim.finish_grad_sync()`` may be called explicitly after the last backward of a step;
``clip_grad_norm`` and ``step`` call it if it has not run. Gradient accumulation: run the
backward of every micro-batch before it (inside ``model.no_sync()`` for all but the last when
``overlap_grad_reduce`` is on), with micro-batch losses that add up to the step's loss.
Checkpoints: ``model.state_dict()`` has the plain model's keys; ``unwrap_model(model)`` gives
the :class:`WallWM` (``parameter_counts()`` etc., counts of this rank's slices).

Pipeline parallel and microbatches: :mod:`.pipeline` builds this rank's model chunks, wraps
each in DDP around a :class:`~.stage_module.StageModule`, and runs megatron-core's schedules;
:func:`build_parallel_optimizer` takes that list of chunks as well (one optimizer over all of
them, parameter names those of the whole model).

Trade-off: DDP is used even with one data-parallel rank, so there is one code path (at the
cost of one copy of the gradients into its buffer); megatron's distributed optimizer is not
used (it does not run on CPU), so optimizer state is replicated over data-parallel ranks.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from torch import nn

from wallwm_pretrain.config import ModelConfig, OptimConfig
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.spec import build_transformer_config
from wallwm_pretrain.optim import (
    LocalMatrices,
    OptimizerSet,
    ParamSplit,
    resolve_auto_ns_dtype,
    split_parameters,
)
from wallwm_pretrain.parallel.global_batch import GlobalBatchLoss
from wallwm_pretrain.parallel.grad_norm import clip_by_global_norm, global_grad_norm
from wallwm_pretrain.parallel.stage_module import StageModule
from wallwm_pretrain.parallel.state import ParallelContext
from wallwm_pretrain.parallel.tp_matrices import TensorParallelMatrices


def validate_tensor_parallel(cfg: ModelConfig, tp: int) -> None:
    """Check that attention heads and FFN width split evenly over ``tp`` ranks.

    Raises:
        ValueError: naming the factor that does not divide.
    """
    for name, value in (("num_heads", cfg.num_heads), ("ffn_hidden_size", cfg.ffn_hidden_size)):
        if value % tp:
            raise ValueError(
                f"model.{name}={value} is not divisible by parallel.tp={tp} "
                f"({value} = {value // tp} * {tp} + {value % tp}); tensor parallel splits it evenly"
            )


def parallelize_model(
    model: WallWM,
    ctx: ParallelContext,
    overlap_grad_reduce: bool | None = None,
    bucket_size: int | None = None,
) -> DistributedDataParallel:
    """Wrap ``model`` for data-parallel training over ``ctx``'s data-parallel group.

    Args:
        model: built after :func:`init_parallel` on every rank with the same seed.
        ctx: from :func:`init_parallel`.
        overlap_grad_reduce: all-reduce buckets while backward runs; default on for CUDA
            (on CPU the synchronous reduction in ``finish_grad_sync`` is simpler and as fast).
        bucket_size: elements per bucket when overlapping (megatron's default when None).

    Returns:
        ``DistributedDataParallel(GlobalBatchLoss(model))``; call it like the model.

    Raises:
        ValueError: the model's heads or FFN width do not split over ``ctx.tp``.
    """
    validate_tensor_parallel(model.cfg, ctx.tp)
    if overlap_grad_reduce is None:
        overlap_grad_reduce = ctx.device.type == "cuda"
    ddp_config = DistributedDataParallelConfig(
        overlap_grad_reduce=overlap_grad_reduce,
        use_distributed_optimizer=False,
        bucket_size=bucket_size,
        average_in_collective=False,
    )
    # Sum, not average, over the group: GlobalBatchLoss already divides by the global count.
    config = build_transformer_config(model.cfg)
    config.calculate_per_token_loss = True
    wrapped = GlobalBatchLoss(model, ps.get_data_parallel_group(), ctx.dp)
    ddp = DistributedDataParallel(config, ddp_config, wrapped)
    # Same seed should already give the same weights; the broadcast makes it a guarantee.
    ddp.broadcast_params()
    return ddp


def unwrap_model(model: nn.Module) -> WallWM:
    """The :class:`WallWM` inside what :func:`parallelize_model` returned, inside one chunk of
    :func:`~.pipeline.parallelize_stages`, or the model itself."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    if isinstance(model, (GlobalBatchLoss, StageModule)):
        model = model.model
    return model


def as_chunks(model: nn.Module | list[nn.Module]) -> list[nn.Module]:
    """A model or a list of model chunks, as a list."""
    return list(model) if isinstance(model, (list, tuple)) else [model]


def flow_noise_generator(seed: int, ctx: ParallelContext) -> torch.Generator:
    """RNG for flow times and noise: shared by TP peers, distinct per data-parallel rank.

    TP peers must draw the same noise (they compute one forward together); data-parallel ranks
    hold different samples and should not reuse one another's draws.
    """
    return torch.Generator(device=ctx.device).manual_seed(seed * 1_000_003 + 7919 * (ctx.dp_rank + 1))


class ParallelOptimizerSet(OptimizerSet):
    """:class:`OptimizerSet` for TP/DP runs: same interface, plus :meth:`finish_grad_sync`.

    Gradients live in DDP's buffers (``param.main_grad``) between backward and step; ``p.grad``
    points at them only during :meth:`step`, so a later backward never accumulates into a
    buffer twice. :meth:`param_groups_summary` counts this rank's slices.
    """

    def __init__(
        self,
        named_params: dict[str, nn.Parameter],
        split: ParamSplit,
        cfg: OptimConfig,
        total_steps: int,
        ns_dtype: str,
        matrices: LocalMatrices,
        ctx: ParallelContext,
        ddp: DistributedDataParallel | list[DistributedDataParallel] | None,
    ) -> None:
        super().__init__(named_params, split, cfg, total_steps, ns_dtype, matrices=matrices)
        self.ctx = ctx
        self.ddps = [] if ddp is None else as_chunks(ddp)
        self.ddp = self.ddps[0] if self.ddps else None
        self._synced = False

    def finish_grad_sync(self) -> None:
        """Complete the data-parallel gradient reduction of this step (idempotent per step)."""
        if not self._synced:
            for ddp in self.ddps:
                ddp.finish_grad_sync()
        self._synced = True

    def _params_and_grads(self) -> list[tuple[nn.Parameter, torch.Tensor]]:
        if self.ddp is None:
            return [(p, p.grad) for p in self._params.values() if p.grad is not None]
        return [(p, p.main_grad) for p in self._params.values()]

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale all gradients so the norm of the logical model's gradient is <= ``max_norm``.

        Sliced gradients add up over the tensor-parallel group, replicated ones count once;
        the norm, and so the clip factor, is the same on every rank.

        Returns:
            The global norm before clipping.

        Raises:
            ValueError: a negative ``max_norm``.
        """
        if max_norm < 0:
            raise ValueError(f"max_norm must be >= 0 (0 disables clipping), got {max_norm}")
        self.finish_grad_sync()
        pairs = self._params_and_grads()
        mp_size = self.ctx.tp * self.ctx.pp
        group = ps.get_model_parallel_group() if mp_size > 1 else None
        total = global_grad_norm(pairs, self.ctx.tp_rank, group, mp_size, self.ctx.device)
        clip_by_global_norm([g for _, g in pairs], total, max_norm)
        return float(total)

    def step(self) -> None:
        """One update of every parameter (Muon gathers TP-sharded matrices), then the schedules."""
        self.finish_grad_sync()
        if self.ddp is not None:
            for p in self._params.values():
                p.grad = p.main_grad
        try:
            super().step()
        finally:
            if self.ddp is not None:
                for p in self._params.values():
                    p.grad = None
            self._synced = False

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear all gradients, including DDP's buffers (``p.grad`` is always dropped with DDP)."""
        super().zero_grad(set_to_none=set_to_none or self.ddp is not None)
        for ddp in self.ddps:
            ddp.zero_grad_buffer()
        self._synced = False


def build_parallel_optimizer(
    model: nn.Module | list[nn.Module],
    cfg: OptimConfig,
    total_steps: int,
    ctx: ParallelContext,
    gather_tp_matrices: bool = True,
) -> ParallelOptimizerSet:
    """Muon + AdamW for a (possibly DDP-wrapped, tensor-parallel, pipelined) model.

    Args:
        model: what :func:`parallelize_model` or :func:`~.pipeline.parallelize_stages` returned
            (this rank's chunks, in model order), or a bare :class:`WallWM`.
        cfg: the ``optim`` section of the run config.
        total_steps: optimizer steps of the whole run.
        ctx: from :func:`init_parallel`.
        gather_tp_matrices: orthogonalise TP-sharded matrices whole (the correct update).
            False orthogonalises each slice on its own; it exists only as the negative control
            of the equivalence tests.

    Returns:
        A :class:`ParallelOptimizerSet`; parameter names are the bare model's, as in a
        single-process run.

    Raises:
        ValueError: no trainable parameters, or a bad ``ns_dtype`` / schedule value.
    """
    chunks = as_chunks(model)
    ddps = [m for m in chunks if isinstance(m, DistributedDataParallel)]
    if ddps and len(ddps) != len(chunks):
        raise ValueError("build_parallel_optimizer: wrap all model chunks in DDP or none")
    bares = [unwrap_model(m) for m in chunks]
    # Chunk names are the whole model's and chunks come in model order, so the concatenated
    # split is the single-process split restricted to this rank's parameters.
    named: dict[str, nn.Parameter] = {}
    split = ParamSplit([], [], [])
    for bare in bares:
        mine = {name: p for name, p in bare.named_parameters() if p.requires_grad}
        if named.keys() & mine.keys():
            raise ValueError(f"model chunks share parameter names: {sorted(named.keys() & mine.keys())[:3]}")
        named.update(mine)
        part = split_parameters(bare)
        for group in ("muon", "adamw_decay", "adamw_no_decay"):
            getattr(split, group).extend(getattr(part, group))
    if not named:
        raise ValueError("build_parallel_optimizer: the model has no trainable parameters")
    if gather_tp_matrices:
        matrices = TensorParallelMatrices(ps.get_tensor_model_parallel_group(), ctx.tp_rank, ctx.tp)
    else:
        matrices = LocalMatrices()
    ns_dtype = resolve_auto_ns_dtype(cfg.ns_dtype, ctx.device.type)
    return ParallelOptimizerSet(named, split, cfg, total_steps, ns_dtype, matrices, ctx, ddps or None)
