"""Checkpoint state in the canonical (TP=1, PP=1) layout, whatever the run's layout.

Gathering (:func:`canonical_checkpoint`) puts every tensor-parallel slice of the model into its
whole logical tensor, then the pipeline ranks' states on the writer (global rank 0), which
orders them as the single-process model orders its parameters; the optimizer's whole state is
built on the writer from every rank's pieces (:func:`~.optim.whole.gather_whole_state`). That
is the state one process would hold: what the gathered layout and the equivalence tests
compare. Loading (:func:`load_canonical`) cuts each rank's part back out: each pipeline rank
takes its layers, each tensor-parallel rank its slices, each optimizer its share (through the
same pieces interface as a sharded checkpoint). Any TP x PP x DP layout resumes from any other.

Trade-off: the writer holds one whole copy of the model and optimizer state while gathering.
The trainer therefore saves sharded (:mod:`.rank_pieces`); gathered checkpoints of older runs
still load here, and ``python -m wallwm_pretrain.checkpoint merge`` writes one from a sharded
checkpoint.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor, nn

from wallwm_pretrain.checkpoint.optim import as_source, gather_whole_state, optimizer_pieces
from wallwm_pretrain.checkpoint.optim.by_name import to_cpu
from wallwm_pretrain.optim import OptimizerSet
from wallwm_pretrain.optim.tp_matrices import TensorParallelMatrices, is_tp_sharded
from wallwm_pretrain.parallel.parallelize import as_chunks, unwrap_model
from wallwm_pretrain.parallel.pipeline_split import virtual_chunk
from wallwm_pretrain.parallel.state import ParallelContext


def _matrices(ctx: ParallelContext) -> TensorParallelMatrices:
    group = ctx.pg_collection.tp if ctx.tp > 1 else None
    return TensorParallelMatrices(group, ctx.tp_rank, ctx.tp)


def _chunks(model: nn.Module | list[nn.Module]) -> list[nn.Module]:
    return [unwrap_model(m) for m in as_chunks(model)]


def _params(chunks: list[nn.Module]) -> dict[str, nn.Parameter]:
    return {name: p for c in chunks for name, p in c.named_parameters()}


def canonical_model_state(model: nn.Module | list[nn.Module], ctx: ParallelContext) -> dict[str, Tensor]:
    """Whole-model, whole-tensor model state, complete and in model order on global rank 0.

    A collective over the tensor-parallel group, then (pp > 1) over the pipeline group of rank
    0: call on all ranks. Other ranks get their own pipeline rank's part (whole tensors).

    Args:
        model: this rank's model, or its list of chunks (bare or wrapped), in model order.
        ctx: from :func:`init_parallel`.
    """
    tp = _matrices(ctx)
    chunks = _chunks(model)
    params = _params(chunks)
    model_state = {
        name: (tp.gather(params[name], t) if name in params else t)
        for c in chunks
        for name, t in c.state_dict().items()
    }
    # only the pipeline of global rank 0 (tp rank 0, dp rank 0, cp rank 0) needs to meet at the writer
    if ctx.pp == 1 or ctx.tp_rank != 0 or ctx.dp_rank != 0 or ctx.cp_rank != 0:
        return model_state
    # the virtual chunk index of each chunk, so the writer can order the chunks' names as one model
    chunk_names = [(virtual_chunk(ctx.pp, ctx.pp_rank, k), list(c.state_dict().keys())) for k, c in enumerate(chunks)]
    group = ctx.pg_collection.pp
    gathered = [None] * ctx.pp if ctx.pp_rank == 0 else None
    dist.gather_object((to_cpu(model_state), chunk_names), gathered, dst=dist.get_global_rank(group, 0), group=group)
    if ctx.pp_rank != 0:
        return model_state
    order = [n for _, names in sorted(s for part in gathered for s in part[1]) for n in names]
    whole_model = {n: t for part in gathered for n, t in part[0].items()}
    return {n: whole_model[n] for n in order}


def canonical_checkpoint(
    model: nn.Module | list[nn.Module], optimizer: OptimizerSet, ctx: ParallelContext
) -> tuple[dict[str, Tensor], dict | None]:
    """Canonical model and optimizer state of the run, complete on global rank 0 (a collective
    over every rank); the optimizer state is None elsewhere."""
    model_state = canonical_model_state(model, ctx)
    order = list(model_state) if ctx.rank == 0 else None
    return model_state, gather_whole_state(optimizer, order)


def local_model_states(
    chunks: list[nn.Module], model_state: dict[str, Tensor], ctx: ParallelContext, keep_missing: bool = False
) -> list[dict[str, Tensor]]:
    """Each chunk's part of a canonical model state (this rank's slices; no collective).

    Args:
        keep_missing: a tensor the state lacks keeps the chunk's own value (``model.init_from``
            with ``model.init_from_partial``) instead of failing.

    Raises:
        KeyError: the checkpoint lacks a tensor this rank holds (named).
    """
    tp = _matrices(ctx)
    chunks = _chunks(chunks)
    params = _params(chunks)
    states = []
    for c in chunks:
        own = c.state_dict()
        missing = [n for n in own if n not in model_state]
        if missing and not keep_missing:
            raise KeyError(f"checkpoint has no {missing[:3]} (of {len(missing)} tensors this pipeline rank holds)")
        states.append({
            n: own[n] if n not in model_state else tp.local(params[n], model_state[n]) if n in params else model_state[n]
            for n in own
        })
    return states


def canonical_shape(param: nn.Parameter, ctx: ParallelContext) -> tuple[int, ...]:
    """The whole (TP = 1) shape of this rank's slice of a parameter (megatron's partition marks)."""
    shape = list(param.shape)
    if ctx.tp > 1 and is_tp_sharded(param):
        shape[int(param.partition_dim)] *= ctx.tp
    return tuple(shape)


def load_canonical(
    chunks: list[nn.Module],
    optimizer: OptimizerSet | None,
    model_state: dict[str, Tensor],
    optim_state: dict | None,
    ctx: ParallelContext,
    keep_missing: bool = False,
) -> None:
    """Load a canonical checkpoint into this rank's chunks and optimizer (no collectives);
    ``keep_missing``: see :func:`local_model_states`."""
    for chunk, state in zip(_chunks(chunks), local_model_states(chunks, model_state, ctx, keep_missing)):
        chunk.load_state_dict(state)
    if optimizer is not None and optim_state is not None:
        optimizer_pieces(optimizer).load(*as_source(optim_state))
