"""Per-rank bytes of weights, gradients and optimizer state under a TP x PP x DP layout.

What a rank holds, as the trainer builds it (fp32 master weights; bf16 autocast only changes
activations):

- weights and gradients: 4 bytes per element of the rank's parameters. A tensor-parallel linear
  layer's weight is split over the TP ranks; everything else (norms, modulation, embeddings) is
  whole on every rank of the TP x DP group.
- AdamW (embeddings, heads, norms, biases): two fp32 moments; ZeRO-1 (``muon_mode`` owner or
  gather) shards them over the DP ranks, ``replicated`` keeps them whole.
- Muon (hidden matrices): one fp32 momentum. ``owner``: kept only on each logical matrix's home
  among the pipeline rank's DP x TP ranks, by the optimizer's own LPT plan (``optim.distributed.plan``);
  the busiest home is reported. ``gather`` and ``replicated``: every rank keeps the momentum of
  its own pieces.

Newton-Schulz work buffers (a few copies of the largest matrix, transient) are not included.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from wallwm_pretrain.model.local_layers import LocalLinear
from wallwm_pretrain.optim.distributed.layout import fused_layouts
from wallwm_pretrain.optim.distributed.plan import assign_homes, logical_matrices
from wallwm_pretrain.optim.params import uses_muon

FP32 = 4


@dataclass(frozen=True)
class Layout:
    tp: int
    pp: int
    dp: int

    @property
    def world(self) -> int:
        return self.tp * self.pp * self.dp


@dataclass
class StateBytes:
    """One rank's parameter-related memory, in bytes."""

    params: int  # elements of the rank's parameters
    weights: int
    grads: int
    adamw: int
    muon: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.adamw + self.muon


def tp_split_names(model: nn.Module) -> set[str]:
    """Parameters that tensor parallelism splits: the weights of the tensor-parallel linears."""
    return {
        f"{mod_name}.{p_name}" if mod_name else p_name
        for mod_name, module in model.named_modules()
        if isinstance(module, LocalLinear)
        for p_name, _ in module.named_parameters(recurse=False)
    }


def pipeline_rank_state_bytes(part: nn.Module, layout: Layout, muon_mode: str, split_fused: bool) -> StateBytes:
    """Memory of the busiest rank holding one pipeline rank's ``part`` (built whole, at TP=1)."""
    split = tp_split_names(part)
    named = dict(part.named_parameters())
    local = {n: p.numel() // layout.tp if n in split else p.numel() for n, p in named.items()}
    muon_names = [n for n, p in named.items() if uses_muon(p)]
    adamw_elems = sum(local[n] for n in named if n not in set(muon_names))
    if muon_mode == "replicated":
        adamw = 2 * FP32 * adamw_elems
    else:  # ZeRO-1: the moments are sharded over the data-parallel ranks
        adamw = 2 * FP32 * -(-adamw_elems // layout.dp)
    if muon_mode == "owner":
        matrices = logical_matrices(
            {n: named[n] for n in muon_names}, fused_layouts(part, tp=1), tp=1, split_fused=split_fused
        )
        load = [0] * (layout.dp * layout.tp)
        for m in assign_homes(matrices, layout.dp * layout.tp):
            load[m.home] += m.numel
        muon = FP32 * max(load, default=0)
    else:
        muon = FP32 * sum(local[n] for n in muon_names)
    elems = sum(local.values())
    return StateBytes(elems, FP32 * elems, FP32 * elems, adamw, muon)
