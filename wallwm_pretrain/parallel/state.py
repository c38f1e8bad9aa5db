"""Process groups for a run: torch.distributed + megatron-core model-parallel state.

This is the one place that creates process groups. It works the same under ``torchrun`` (reads
RANK / WORLD_SIZE / LOCAL_RANK) and as a plain single process (an in-memory store, no port).
Backend and device follow the hardware: NCCL + ``cuda:LOCAL_RANK`` when a GPU is present and
wanted, gloo + CPU otherwise (then megatron-core's CUDA assumptions are patched first).
Data-parallel size is derived: world = tp * pp * cp * dp. Context-parallel ranks (``cp``) hold
the same samples and the same weights, each a piece of every sample's token sequence; whatever
sums over data-parallel replicas (gradients, optimizer homes and shards) sums over DP x CP,
megatron's data-parallel-with-context group.

The groups megatron-core creates are also handed out explicitly, as its
``ProcessGroupCollection`` (``ParallelContext.pg_collection``): the model passes it to every
megatron layer instead of letting each layer look the groups up in megatron's globals.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from wallwm_pretrain.optim.groups import OptimizerGroups
from wallwm_pretrain.parallel.cpu_patches import apply_cpu_patches

if TYPE_CHECKING:
    from megatron.core.process_groups_config import ProcessGroupCollection


@dataclass(frozen=True)
class ParallelContext:
    """Where this process sits in the run."""

    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    dp_rank: int
    tp_rank: int
    pp_rank: int
    device: torch.device
    backend: str
    vpp: int = 1
    cp: int = 1
    cp_rank: int = 0
    # megatron's groups of this rank (see build_pg_collection); None only for hand-made contexts
    pg_collection: ProcessGroupCollection | None = field(default=None, repr=False, compare=False)

    @property
    def is_last_pipeline_rank(self) -> bool:
        """This rank holds the last pipeline rank (heads and losses)."""
        return self.pp_rank == self.pp - 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def choose_device(requested: str, local_rank: int) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but torch.cuda.is_available() is False")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def build_pg_collection() -> ProcessGroupCollection:
    """This rank's megatron-core groups as a ``ProcessGroupCollection`` (after
    ``initialize_model_parallel``; it creates no group of its own).

    Holds what megatron's layers read (``tp``; attention also ``cp``), the pipeline group
    (``pp``), the data-parallel groups (``dp``, ``dp_cp``) and their model-parallel
    combinations (``tp_cp``, ``mp``). Expert and distributed-optimizer groups are left out:
    the model has no experts and the distributed optimizer is the project's own.
    """
    from megatron.core import parallel_state as ps
    from megatron.core.process_groups_config import ProcessGroupCollection

    return ProcessGroupCollection(
        tp=ps.get_tensor_model_parallel_group(),
        cp=ps.get_context_parallel_group(),
        tp_cp=ps.get_tensor_and_context_parallel_group(),
        pp=ps.get_pipeline_model_parallel_group(),
        mp=ps.get_model_parallel_group(),
        dp=ps.get_data_parallel_group(),
        dp_cp=ps.get_data_parallel_group(with_context_parallel=True),
    )


def init_parallel(
    tp: int = 1, pp: int = 1, device: str = "auto", seed: int = 0, vpp: int = 1, timeout_s: float | None = None,
    cp: int = 1,
) -> ParallelContext:
    """Initialise torch.distributed and megatron-core's model-parallel groups.

    Args:
        tp: tensor-parallel size.
        pp: pipeline-parallel size.
        vpp: virtual chunks (model chunks) per pipeline rank; > 1 selects megatron's
            interleaved schedule.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: base seed; megatron's model-parallel RNG streams are derived from it.
        timeout_s: collective timeout of every group (None = torch's default, 10 min for gloo
            and NCCL); a collective that waits longer raises instead of hanging.
        cp: context-parallel size (megatron's ``context_parallel_size``): ranks that split each
            sample's token sequence.

    Raises:
        ValueError: the world size is not a multiple of tp * pp * cp, or vpp > 1 without pp > 1.
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world_size % (tp * pp * cp):
        raise ValueError(
            f"world size {world_size} is not divisible by tp*pp*cp = {tp}*{pp}*{cp} = {tp * pp * cp}; "
            f"need world = tp * pp * cp * dp"
        )
    if vpp > 1 and pp == 1:
        raise ValueError(f"vpp={vpp} interleaves pipeline ranks and needs pp > 1, got pp={pp}")
    dev = choose_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cpu":
        apply_cpu_patches()

    if not dist.is_initialized():
        timeout = None if timeout_s is None else timedelta(seconds=timeout_s)
        if world_size == 1 and "MASTER_ADDR" not in os.environ:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)

    from megatron.core import parallel_state as ps
    from megatron.core import tensor_parallel

    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=pp,
            virtual_pipeline_model_parallel_size=vpp if vpp > 1 else None,
            context_parallel_size=cp,
            # megatron takes whole minutes: its groups wait up to the next minute
            **({} if timeout_s is None else {"distributed_timeout_minutes": max(1, math.ceil(timeout_s / 60))}),
        )
    tensor_parallel.model_parallel_cuda_manual_seed(seed)
    return ParallelContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        tp=tp,
        pp=pp,
        dp=world_size // (tp * pp * cp),
        dp_rank=ps.get_data_parallel_rank(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        device=dev,
        backend=backend,
        vpp=vpp,
        cp=cp,
        cp_rank=ps.get_context_parallel_rank(),
        pg_collection=build_pg_collection(),
    )


def save_group(ctx: "ParallelContext", timeout_s: float) -> dist.ProcessGroup | None:
    """A gloo group of all ranks for sharded checkpoint saves (None in one process).

    A background write exchanges CPU objects over it while training continues: its messages
    must never interleave with the training step's collectives, so it is a group of its own,
    with the save timeout rather than the step timeout.
    """
    if ctx.world_size == 1:
        return None
    return dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))


def shutdown_parallel() -> None:
    """Tear down groups; the barrier first avoids gloo aborting at exit."""
    if not dist.is_initialized():
        return
    from megatron.core import parallel_state as ps

    dist.barrier()
    ps.destroy_model_parallel()
    dist.destroy_process_group()


def sum_over_pipeline(counts: dict[str, int], ctx: ParallelContext) -> dict[str, int]:
    """Integer counts (e.g. parameters per tower) summed over this rank's pipeline ranks."""
    if ctx.pp == 1:
        return dict(counts)
    from megatron.core import parallel_state as ps

    values = torch.tensor(list(counts.values()), dtype=torch.int64, device=ctx.device)
    dist.all_reduce(values, group=ps.get_pipeline_model_parallel_group())
    return dict(zip(counts, values.tolist()))


def gather_per_dp_rank(obj: object, ctx: ParallelContext) -> list:
    """``obj`` of every data-parallel rank, indexed by dp rank, on every rank (a collective).

    Ranks of one data-parallel rank (its TP/PP peers) hold the same object; any of them speaks.
    """
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, (ctx.dp_rank, obj))
    by_rank = dict(gathered)
    return [by_rank[r] for r in range(ctx.dp)]


def optimizer_groups(ctx: ParallelContext) -> OptimizerGroups:
    """The run's groups as the optimizer takes them (call after :func:`init_parallel`).

    Context-parallel ranks hold the same weights and add their gradients like data-parallel
    replicas (each holds a share of every sample's loss), so the optimizer's data-parallel group
    is megatron's data-parallel-with-context group (DP x CP, the group DDP reduces over) and its
    TP x DP group the tensor-and-data-parallel-with-context one: distributed Muon's homes and
    ZeRO-1 AdamW's shards spread over DP x CP ranks.
    """
    from megatron.core import parallel_state as ps

    mp_size = ctx.tp * ctx.pp
    with_cp = ctx.cp > 1
    return OptimizerGroups(
        tp_dp=ps.get_tensor_and_data_parallel_group(with_context_parallel=with_cp),
        tp=ps.get_tensor_model_parallel_group(),
        dp=ps.get_data_parallel_group(with_context_parallel=with_cp),
        tp_rank=ctx.tp_rank,
        tp_size=ctx.tp,
        dp_rank=ps.get_data_parallel_rank(with_context_parallel=with_cp),
        dp_size=ctx.dp * ctx.cp,
        pp_rank=ctx.pp_rank,
        pp=ps.get_pipeline_model_parallel_group(),
        pp_size=ctx.pp,
        model_parallel=ps.get_model_parallel_group() if mp_size > 1 else None,
    )
