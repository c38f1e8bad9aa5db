"""This rank's pieces of the canonical (TP=1, PP=1) model and optimizer state, and loading
them back under any layout.

Saving: every rank cuts what it holds into pieces of canonical tensors (:mod:`.pieces`):
a tensor-parallel slice is one box per partition stride, a replicated tensor one whole box.
Exactly one rank writes each element: data-parallel rank 0, and for tensors every
tensor-parallel rank holds whole, tensor-parallel rank 0 too. The optimizer set adds its own
pieces (:func:`~.optim.optimizer_pieces`). Rank 0 of each pipeline rank's tensor- and data-parallel group also
reports the pipeline rank's model order, the few non-tensor state entries and the optimizer's by-name
structure, from which the checkpoint's index is built.

Loading: each pipeline rank takes its layers, each tensor-parallel rank reads exactly the boxes of its
slices, each optimizer its share. No collective: resharding is the load itself, as with the
gathered checkpoints of :mod:`.canonical`.
"""

from __future__ import annotations

from typing import Any, Optional

from torch import Tensor, nn

from wallwm_pretrain.checkpoint.optim import optimizer_pieces
from wallwm_pretrain.checkpoint.pieces import Piece, PieceSource, pieces_of, read_view, whole
from wallwm_pretrain.checkpoint.views import param_view, writes
from wallwm_pretrain.optim import OptimizerSet
from wallwm_pretrain.parallel.parallelize import as_chunks, unwrap_model
from wallwm_pretrain.parallel.pipeline_split import virtual_chunk
from wallwm_pretrain.parallel.state import ParallelContext


def _chunks(model: nn.Module | list[nn.Module]) -> list[nn.Module]:
    return [unwrap_model(m) for m in as_chunks(model)]


def _view(name: str, t: Tensor, params: dict[str, nn.Parameter], ctx: ParallelContext):
    return param_view(name, params[name], ctx.tp_rank, ctx.tp) if name in params else whole(name, t.shape)


def rank_pieces(
    model: nn.Module | list[nn.Module], optimizer: Optional[OptimizerSet], ctx: ParallelContext
) -> tuple[list[Piece], Optional[dict[str, Any]]]:
    """What this rank writes into a sharded checkpoint (no collective).

    Returns:
        ``(pieces, description)``: the pieces (views of the live tensors; copy them before
        training goes on), and on rank 0 of each pipeline rank's tensor- and data-parallel group
        that pipeline rank's description ``{"stages": [(virtual chunk index, names)], "extra":
        {name: value}, "optimizer": by-name structure}``, None elsewhere. (The keys ``stages``
        here and ``stage`` in the checkpoint's rank reports are the format's names, kept so that
        existing checkpoints load.)
    """
    chunks = _chunks(model)
    params = {name: p for c in chunks for name, p in c.named_parameters()}
    pieces: list[Piece] = []
    extra: dict[str, Any] = {}
    chunk_names = []
    for k, chunk in enumerate(chunks):
        state = chunk.state_dict()
        chunk_names.append((virtual_chunk(ctx.pp, ctx.pp_rank, k), list(state)))
        for name, t in state.items():
            if not isinstance(t, Tensor):
                extra[name] = t  # megatron's ``_extra_state`` (None): small, kept in the index
                continue
            view = _view(name, t, params, ctx)
            # context-parallel ranks hold the same weights as their first one: it alone writes
            if ctx.cp_rank == 0 and writes(view, ctx.dp_rank, ctx.tp_rank):
                pieces += pieces_of(view, t.detach())
    structure = None
    if optimizer is not None:
        structure, optim_pieces = optimizer_pieces(optimizer).save()
        pieces += optim_pieces
    if ctx.dp_rank != 0 or ctx.tp_rank != 0 or ctx.cp_rank != 0:
        return pieces, None
    return pieces, {"stages": chunk_names, "extra": extra, "optimizer": structure}


def load_rank_pieces(
    model: nn.Module | list[nn.Module],
    optimizer: Optional[OptimizerSet],
    source: PieceSource,
    extra: dict[str, Any],
    optim_structure: Optional[dict],
    ctx: ParallelContext,
) -> None:
    """Read this rank's slices of the model and its optimizer share from a sharded checkpoint.

    Raises:
        KeyError: the checkpoint lacks a tensor this rank holds (named).
        ValueError: a tensor whose saved shape differs from this model's (named).
    """
    chunks = _chunks(model)
    params = {name: p for c in chunks for name, p in c.named_parameters()}
    for chunk in chunks:
        state = {}
        for name, t in chunk.state_dict().items():
            if not isinstance(t, Tensor):
                state[name] = extra.get(name, t)
                continue
            view = _view(name, t, params, ctx)
            shape = source.shape(name)
            if shape is None:
                raise KeyError(f"checkpoint has no tensor {name!r}")
            if shape != view.global_shape:
                raise ValueError(f"{name}: checkpoint shape {shape}, this model {view.global_shape}")
            state[name] = read_view(view, source.read)
        chunk.load_state_dict(state)
    if optimizer is not None and optim_structure is not None:
        optimizer_pieces(optimizer).load(optim_structure, source)
