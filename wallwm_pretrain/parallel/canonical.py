"""Checkpoint state in the canonical (TP=1) layout, whatever the run's layout.

Saving gathers every tensor-parallel slice into its whole logical tensor (parameters and the
Muon momentum that has the same layout; AdamW only holds replicated tensors), so a checkpoint
is the state a single process would hold. Loading cuts each rank's slice back out. Any
TP x DP layout therefore resumes from any other: resharding is the load itself.

Trade-off: the rank that writes holds one whole copy of the model and optimizer state while
saving, and the save is a collective over the tensor-parallel group. Per-rank shard files,
which avoid both, are the way to go for models that do not fit one host's memory.
"""

from __future__ import annotations

from typing import Any

from megatron.core import parallel_state as ps
from torch import Tensor, nn

from wallwm_pretrain.parallel.state import ParallelContext
from wallwm_pretrain.parallel.tp_matrices import TensorParallelMatrices


def _matrices(ctx: ParallelContext) -> TensorParallelMatrices:
    group = ps.get_tensor_model_parallel_group() if ctx.tp > 1 else None
    return TensorParallelMatrices(group, ctx.tp_rank, ctx.tp)


def _muon_names(optim_state: dict[str, Any]) -> dict[int, str]:
    """Muon's state index -> parameter name (indices follow the saved split order)."""
    names = optim_state["split"]["muon"]
    groups = optim_state["optimizers"].get("muon", {}).get("param_groups", [])
    order = [i for g in groups for i in g["params"]]
    return {idx: names[pos] for pos, idx in enumerate(order)}


def _map_muon(optim_state: dict, params: dict[str, nn.Parameter], fn) -> dict:
    if "muon" not in optim_state["optimizers"]:
        return optim_state
    names = _muon_names(optim_state)
    muon = optim_state["optimizers"]["muon"]
    state = {
        idx: {k: (fn(params[names[idx]], v) if isinstance(v, Tensor) and v.dim() == 2 else v) for k, v in s.items()}
        for idx, s in muon["state"].items()
    }
    optimizers = dict(optim_state["optimizers"], muon=dict(muon, state=state))
    return dict(optim_state, optimizers=optimizers)


def canonical_state(model: nn.Module, optim_state: dict, ctx: ParallelContext) -> tuple[dict[str, Tensor], dict]:
    """Whole-tensor model and optimizer state (a collective over the TP group: call on all ranks)."""
    tp = _matrices(ctx)
    params = dict(model.named_parameters())
    model_state = {
        name: (tp.gather(params[name], t) if name in params else t) for name, t in model.state_dict().items()
    }
    return model_state, _map_muon(optim_state, params, tp.gather)


def local_state(model: nn.Module, model_state: dict[str, Tensor], optim_state: dict, ctx: ParallelContext):
    """This rank's slices of canonical model and optimizer state."""
    tp = _matrices(ctx)
    params = dict(model.named_parameters())
    local_model = {
        name: (tp.local(params[name], t) if name in params else t) for name, t in model_state.items()
    }
    return local_model, _map_muon(optim_state, params, tp.local)
