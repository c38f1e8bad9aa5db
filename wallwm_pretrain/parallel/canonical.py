"""Checkpoint state in the canonical (TP=1, PP=1) layout, whatever the run's layout.

Saving gathers every tensor-parallel slice into its whole logical tensor (parameters and the
Muon momentum that has the same layout; AdamW only holds replicated tensors), then gathers the
pipeline stages' states to the writer (global rank 0), which orders them as the single-process
model orders its parameters. A checkpoint is therefore the state one process would hold.
Loading cuts each rank's part back out: each stage takes its layers, each tensor-parallel rank
its slices. Any TP x PP x DP layout resumes from any other: resharding is the load itself.

The optimizer state is keyed by parameter *name* in between (:func:`by_name`): a rank's Muon and
AdamW number their parameters 0..n-1 over what that rank holds, the canonical state over the
whole model, and an AdamW group (with decay / without) may be empty on one stage and not on
another; names are what stays fixed. Per-group scheduler fields follow their group.

Trade-off: the writer holds one whole copy of the model and optimizer state while saving, and
the save is a collective over the tensor-parallel group and then the writer's pipeline group.
Per-rank shard files, which avoid both, are the way to go for models that do not fit one
host's memory.
"""

from __future__ import annotations

from typing import Any, Callable

import torch.distributed as dist
from megatron.core import parallel_state as ps
from torch import Tensor, nn

from wallwm_pretrain.parallel.parallelize import as_chunks, unwrap_model
from wallwm_pretrain.parallel.stages import virtual_stage
from wallwm_pretrain.parallel.state import ParallelContext
from wallwm_pretrain.parallel.tp_matrices import TensorParallelMatrices

GROUPS = ("muon", "adamw_decay", "adamw_no_decay")
# which optimizer holds each kind of group, in the order OptimizerSet builds its groups
KINDS = {"muon": ("muon",), "adamw": ("adamw_decay", "adamw_no_decay")}
PER_GROUP_SCHEDULER_FIELDS = ("base_lrs", "_last_lr", "lr_lambdas")


def _matrices(ctx: ParallelContext) -> TensorParallelMatrices:
    group = ps.get_tensor_model_parallel_group() if ctx.tp > 1 else None
    return TensorParallelMatrices(group, ctx.tp_rank, ctx.tp)


def _chunks(model: nn.Module | list[nn.Module]) -> list[nn.Module]:
    return [unwrap_model(m) for m in as_chunks(model)]


def _params(chunks: list[nn.Module]) -> dict[str, nn.Parameter]:
    return {name: p for c in chunks for name, p in c.named_parameters()}


# -- optimizer state by parameter name ----------------------------------------------------------
def _kinds(key: str, split: dict[str, list[str]]) -> list[str]:
    """The group kinds an optimizer holds, in order (empty groups are not built)."""
    return [kind for kind in KINDS[key] if split[kind]]


def by_name(optim_state: dict) -> dict:
    """:meth:`OptimizerSet.state_dict` keyed by parameter name and group kind.

    Returns:
        ``{"split", "hparams": {kind: group hyper-parameters}, "state": {optimizer: {name: state}},
        "schedulers": {optimizer: {kind or field: ...}}}``.
    """
    split = {g: list(optim_state["split"][g]) for g in GROUPS}
    hparams, state, schedulers = {}, {}, {}
    for key, opt in optim_state["optimizers"].items():
        kinds = _kinds(key, split)
        names = [n for kind in kinds for n in split[kind]]
        order = [i for g in opt["param_groups"] for i in g["params"]]
        index_name = {idx: names[pos] for pos, idx in enumerate(order)}
        for kind, group in zip(kinds, opt["param_groups"]):
            hparams[kind] = {k: v for k, v in group.items() if k != "params"}
        state[key] = {index_name[idx]: s for idx, s in opt["state"].items()}
        sched = dict(optim_state["schedulers"][key])
        per_group = {f: dict(zip(kinds, sched.pop(f))) for f in PER_GROUP_SCHEDULER_FIELDS if f in sched}
        schedulers[key] = {"common": sched, "per_group": per_group}
    return {"split": split, "hparams": hparams, "state": state, "schedulers": schedulers}


def from_by_name(named: dict, split: dict[str, list[str]]) -> dict:
    """The :meth:`OptimizerSet.state_dict` of a set that holds ``split`` (names in its order)."""
    optimizers, schedulers = {}, {}
    for key in KINDS:
        kinds = _kinds(key, split)
        if not kinds:
            continue
        state, groups, start = {}, [], 0
        saved = named["state"].get(key, {})
        for kind in kinds:
            idx = list(range(start, start + len(split[kind])))
            start += len(idx)
            groups.append(dict(named["hparams"][kind], params=idx))
            state.update({i: saved[n] for i, n in zip(idx, split[kind]) if n in saved})
        optimizers[key] = {"state": state, "param_groups": groups}
        sched = named["schedulers"][key]
        schedulers[key] = dict(
            sched["common"], **{f: [values[k] for k in kinds] for f, values in sched["per_group"].items()}
        )
    return {"split": {g: list(split[g]) for g in GROUPS}, "optimizers": optimizers, "schedulers": schedulers}


def _map_2d(named: dict, key: str, params: dict[str, nn.Parameter], fn: Callable) -> dict:
    """Apply ``fn(param, tensor)`` to the 2-D tensors of optimizer ``key``'s state; entries of
    parameters this rank does not hold are dropped."""
    if key not in named["state"]:
        return named
    state = {
        name: {k: (fn(params[name], v) if isinstance(v, Tensor) and v.dim() == 2 else v) for k, v in s.items()}
        for name, s in named["state"][key].items()
        if name in params
    }
    return dict(named, state=dict(named["state"], **{key: state}))


def _merge(parts: list[dict], order: list[str]) -> dict:
    """One by-name state from the stages' by-name states; names sorted by ``order``."""
    position = {n: i for i, n in enumerate(order)}
    split = {g: sorted((n for p in parts for n in p["split"][g]), key=position.__getitem__) for g in GROUPS}
    merged: dict[str, Any] = {"split": split, "hparams": {}, "state": {}, "schedulers": {}}
    for part in parts:
        for kind, h in part["hparams"].items():
            merged["hparams"].setdefault(kind, h)
        for key, s in part["state"].items():
            merged["state"].setdefault(key, {}).update(s)
        for key, sched in part["schedulers"].items():
            mine = merged["schedulers"].setdefault(key, {"common": sched["common"], "per_group": {}})
            for field, values in sched["per_group"].items():
                for kind, v in values.items():
                    mine["per_group"].setdefault(field, {}).setdefault(kind, v)
    return merged


# -- save and load ----------------------------------------------------------------------------
def canonical_state(
    model: nn.Module | list[nn.Module], optim_state: dict, ctx: ParallelContext
) -> tuple[dict[str, Tensor], dict]:
    """Whole-model, whole-tensor model and optimizer state, complete on global rank 0.

    A collective over the tensor-parallel group, then (pp > 1) over the pipeline group of rank
    0: call on all ranks. Other ranks get their own stages' part (whole tensors).

    Args:
        model: this rank's model, or its list of chunks (bare or wrapped), in model order.
        optim_state: this rank's :meth:`OptimizerSet.state_dict`.
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
    named = _map_2d(by_name(optim_state), "muon", params, tp.gather)
    # only the pipeline of global rank 0 (tp rank 0, dp rank 0) needs to meet at the writer
    if ctx.pp == 1 or ctx.tp_rank != 0 or ctx.dp_rank != 0:
        return model_state, from_by_name(named, named["split"])
    # virtual stage of each chunk, so the writer can order the stages' names as one model
    stages = [(virtual_stage(ctx.pp, ctx.pp_rank, k), list(c.state_dict().keys())) for k, c in enumerate(chunks)]
    mine = (_cpu(model_state), _cpu(named), stages)
    group = ps.get_pipeline_model_parallel_group()
    gathered = [None] * ctx.pp if ctx.pp_rank == 0 else None
    dist.gather_object(mine, gathered, dst=dist.get_global_rank(group, 0), group=group)
    if ctx.pp_rank != 0:
        return model_state, from_by_name(named, named["split"])
    order = [n for _, names in sorted(s for part in gathered for s in part[2]) for n in names]
    whole_model = {n: t for part in gathered for n, t in part[0].items()}
    merged = _merge([part[1] for part in gathered], order)
    return {n: whole_model[n] for n in order}, from_by_name(merged, merged["split"])


def _cpu(tree):
    if isinstance(tree, Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: _cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_cpu(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_cpu(v) for v in tree)
    return tree


def local_state(model: nn.Module, model_state: dict[str, Tensor], optim_state: dict, ctx: ParallelContext):
    """This rank's slices of canonical model and optimizer state (one module, pp = 1)."""
    chunk_states, optim = local_chunk_states([model], model_state, optim_state, ctx, _split_of(optim_state))
    return chunk_states[0], optim


def _split_of(optim_state: dict) -> dict[str, list[str]]:
    return {g: list(optim_state["split"][g]) for g in GROUPS}


def local_chunk_states(
    chunks: list[nn.Module],
    model_state: dict[str, Tensor],
    optim_state: dict | None,
    ctx: ParallelContext,
    split: dict[str, list[str]] | Any,
) -> tuple[list[dict[str, Tensor]], dict | None]:
    """Each chunk's part of a canonical model state and this rank's optimizer state.

    Args:
        chunks: this rank's chunks (bare or wrapped), in model order.
        model_state: canonical model state (whole model, whole tensors).
        optim_state: canonical optimizer state, or None (then no optimizer state is returned).
        ctx: from :func:`init_parallel`.
        split: this rank's optimizer split (a ``ParamSplit`` or a dict of name lists).

    Raises:
        KeyError: the checkpoint lacks a tensor this rank holds (named).
    """
    tp = _matrices(ctx)
    chunks = _chunks(chunks)
    params = _params(chunks)
    states = []
    for c in chunks:
        missing = [n for n in c.state_dict() if n not in model_state]
        if missing:
            raise KeyError(f"checkpoint has no {missing[:3]} (of {len(missing)} tensors this stage holds)")
        states.append(
            {n: (tp.local(params[n], model_state[n]) if n in params else model_state[n]) for n in c.state_dict()}
        )
    if optim_state is None:
        return states, None
    mine = split if isinstance(split, dict) else {g: list(getattr(split, g)) for g in GROUPS}
    named = _map_2d(by_name(optim_state), "muon", params, tp.local)
    return states, from_by_name(named, mine)


def load_canonical(chunks: list[nn.Module], optimizer, model_state: dict[str, Tensor], optim_state: dict,
                   ctx: ParallelContext) -> None:
    """Load a canonical checkpoint into this rank's chunks and optimizer (no collectives)."""
    owners = hasattr(optimizer, "load_canonical_state_dict")  # distributed Muon: owners take their shares
    states, optim = local_chunk_states(chunks, model_state, None if owners else optim_state, ctx, optimizer.split)
    for chunk, state in zip(_chunks(chunks), states):
        chunk.load_state_dict(state)
    if owners:
        optimizer.load_canonical_state_dict(optim_state)
    else:
        optimizer.load_state_dict(optim)


_NO_OPTIMIZER_STATE = {"split": {k: [] for k in ("muon", "adamw_decay", "adamw_no_decay")}, "optimizers": {}, "schedulers": {}}


def canonical_checkpoint(model: nn.Module | list[nn.Module], optimizer, ctx: ParallelContext) -> tuple[dict, dict]:
    """Canonical model and optimizer state of the run, complete on global rank 0 (collective).

    A distributed Muon set gathers its owners' shares itself; a replicated optimizer set is
    gathered like the model.
    """
    if hasattr(optimizer, "canonical_state_dict"):
        model_state, _ = canonical_state(model, _NO_OPTIMIZER_STATE, ctx)
        order = list(model_state) if ctx.rank == 0 else None
        return model_state, optimizer.canonical_state_dict(dst=0, order=order)
    return canonical_state(model, optimizer.state_dict(), ctx)
