"""One-forward-per-step data parallel: DDP around a loss wrapper (the tests' second path).

The trainer always runs megatron-core's pipeline schedule (``wallwm_pretrain.parallel.pipeline``),
even at PP=1. The equivalence tests also train through this simpler path, where a step is one
forward of the whole model under megatron DDP, and check that both agree with one process.

Each data-parallel rank's loss is its exact share of the global-batch loss: the flow-matching
losses are means over the *real* elements of a batch (padding never counts), so two ranks
holding different event lengths average over different counts, and the mean of their means is
not the loss of the global batch. :class:`GlobalBatchLoss` sums the element counts over the
data-parallel group first and lets every rank divide its squared-error sum by the global count;
the ranks' losses then *add up* to the single-process loss of the global batch, and so do their
gradients (DDP set to sum, megatron's ``calculate_per_token_loss`` mode). The returned ``loss``
carries this rank's share as its gradient but the global-batch value as its value.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from torch import nn

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.flow_matching import FlowNoise
from wallwm_pretrain.model.spec import build_transformer_config
from wallwm_pretrain.parallel.state import ParallelContext


class GlobalBatchLoss(nn.Module):
    """Wraps :class:`WallWM` so that its losses are shares of the global-batch losses.

    Its ``state_dict`` / ``load_state_dict`` are the wrapped model's own (no ``model.`` prefix),
    so checkpoints read the same with or without the wrapper.

    Args:
        model: the model (holding this rank's tensor-parallel slices).
        dp_group: the data-parallel process group.
        dp_size: its size; 1 skips both collectives.
    """

    def __init__(self, model: WallWM, dp_group: dist.ProcessGroup | None, dp_size: int) -> None:
        super().__init__()
        self.model = model
        self.dp_group, self.dp_size = dp_group, dp_size

    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.dp_size > 1:
            dist.all_reduce(x, group=self.dp_group)
        return x

    def forward(
        self, batch: Batch, generator: torch.Generator | None = None, noise: FlowNoise | None = None
    ) -> dict[str, torch.Tensor]:
        """As :meth:`WallWM.forward` on this rank's rows of the global batch.

        Returns:
            ``loss``: value = global-batch loss, gradient = this rank's share (backward it);
            ``loss_video``, ``loss_action``, ``loss_time``: global-batch values (detached);
            ``loss_share``: this rank's share (detached).
        """
        counts = self._sum(self.model.loss_element_counts(batch.lengths, batch.actions.shape[1], batch.history).to(batch.actions.device))
        out = self.model(batch, generator=generator, noise=noise, loss_denominators=counts)
        share = out["loss"]
        # fp32 so that bf16 autocast losses add up over ranks without another rounding
        total = self._sum(
            torch.stack([share.detach(), out["loss_video"], out["loss_action"], out["loss_time"]]).float()
        )
        return {
            "loss": share + (total[0] - share.detach()),
            "loss_video": total[1],
            "loss_action": total[2],
            "loss_time": total[3],
            "loss_share": share.detach(),
        }

    def state_dict(self, *args, **kwargs):
        return self.model.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)


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


def unwrap(model: nn.Module) -> WallWM:
    """The :class:`WallWM` inside what :func:`parallelize_model` returned, or the model itself."""
    if isinstance(model, DistributedDataParallel):
        model = model.module
    return model.model if isinstance(model, GlobalBatchLoss) else model
