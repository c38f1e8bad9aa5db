"""Where megatron-core fuses several linear maps into one weight, for Muon's logical matrices.

Three fused weights occur in the towers, each with its own row layout (see
``wallwm_pretrain.optim.fused``):

- ``SelfAttention.linear_qkv``: rows grouped per query group, ``[q_1 .. q_{h/g}, k, v]`` (plus an
  output gate after the queries when ``attention_output_gate`` is set). Column-parallel with
  stride 1, so rank r holds whole query groups ``r * g/tp .. (r+1) * g/tp - 1``.
- ``CrossAttention.linear_kv``: ``[k, v]`` per head, heads split over ranks like query groups.
- the gated ``MLP.linear_fc1``: ``[gate; up]``, column-parallel with stride 2, so rank r holds
  ``[gate_r; up_r]``.

In all three the local shard has the same row layout as the whole weight with fewer groups (or,
for fc1, shorter blocks), and logical matrix j of the whole weight is the concatenation over
tensor-parallel ranks of logical matrix j of the shards: every part is a plain stride-1
column-parallel matrix. :func:`fused_layouts` returns both layouts per weight name.

Trade-off: the layouts are read from megatron's module classes and attributes, so a new fused
module type is treated as one matrix until it is added here (a test lists the expected names).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from wallwm_pretrain.optim.fused import FusedRows


@dataclass(frozen=True)
class FusedLayout:
    """Row layouts of one fused weight: this rank's shard and the whole (TP=1) weight."""

    local: FusedRows
    whole: FusedRows


def _qkv(module, prefix: str) -> tuple[str, FusedLayout]:
    cfg, tp = module.config, module.world_size
    groups, heads, hn = cfg.num_query_groups, cfg.num_attention_heads, module.hidden_size_per_attention_head
    if groups % tp:
        # Below one group per rank megatron cuts a group across ranks; its rows are no longer
        # whole logical blocks on any shard.
        raise ValueError(
            f"{prefix}.linear_qkv: num_query_groups={groups} does not split over tp={tp} "
            f"({groups} = {groups // tp} * {tp} + {groups % tp}); Muon's Q/K/V split needs whole query groups "
            "per rank (use fewer tensor-parallel ranks or keep the fused matrix whole)"
        )
    q = heads // groups * hn
    names, sizes = ("q", "k", "v"), (q, hn, hn)
    if getattr(cfg, "attention_output_gate", False):
        names, sizes = ("q", "gate", "k", "v"), (q, q, hn, hn)
    return f"{prefix}.linear_qkv.weight", FusedLayout(
        local=FusedRows(names, sizes, groups // tp), whole=FusedRows(names, sizes, groups)
    )


def _kv(module, prefix: str) -> tuple[str, FusedLayout]:
    heads, hn, tp = module.config.num_attention_heads, module.hidden_size_per_attention_head, module.world_size
    return f"{prefix}.linear_kv.weight", FusedLayout(
        local=FusedRows(("k", "v"), (hn, hn), heads // tp), whole=FusedRows(("k", "v"), (hn, hn), heads)
    )


def _fc1(module, prefix: str, tp: int) -> tuple[str, FusedLayout] | None:
    weight = module.linear_fc1.weight
    stride = int(getattr(weight, "partition_stride", 1))
    half = weight.size(0) // 2
    if stride != 2 and tp > 1:
        raise ValueError(
            f"{prefix}.linear_fc1: a gated FFN weight with partition_stride={stride} at tp={tp} holds a "
            "contiguous slice of [gate; up], not a part of each; Muon's gate/up split needs stride 2"
        )
    return f"{prefix}.linear_fc1.weight", FusedLayout(
        local=FusedRows(("gate", "up"), (half, half), 1), whole=FusedRows(("gate", "up"), (half * tp, half * tp), 1)
    )


def _declared(module, prefix: str) -> tuple[str, FusedLayout] | None:
    """A layer that is not megatron's (no tensor parallel) may declare its fused weight:
    ``module.fused_rows() -> (layer attribute, part names, rows per part, groups)``."""
    declare = getattr(module, "fused_rows", None)
    if not callable(declare):
        return None
    attr, names, sizes, groups = declare()
    rows = FusedRows(tuple(names), tuple(sizes), groups)
    return f"{prefix}.{attr}.weight", FusedLayout(local=rows, whole=rows)


def fused_layouts(model: nn.Module, tp: int | None = None) -> dict[str, FusedLayout]:
    """Fused weights of ``model`` by parameter name, with their local and whole row layouts.

    Args:
        model: a module built from megatron-core layers, or from layers that declare their
            fused weights (``fused_rows()``, see :func:`_declared`); any wrapper prefix is kept
            in names, so call it on the module whose ``named_parameters`` the optimizer uses.
        tp: tensor-parallel size for the gated FFN (attention modules know theirs); default:
            megatron's current tensor-parallel world size, or 1 when it is not initialised.

    Returns:
        ``{name: FusedLayout}`` for every fused weight that requires grad.

    Raises:
        ValueError: a fused weight whose shards do not hold whole logical blocks.
    """
    from megatron.core.transformer.attention import CrossAttention, SelfAttention
    from megatron.core.transformer.mlp import MLP

    if tp is None:
        from megatron.core import parallel_state as ps

        tp = ps.get_tensor_model_parallel_world_size() if ps.model_parallel_is_initialized() else 1
    params = dict(model.named_parameters())
    found: dict[str, FusedLayout] = {}
    for prefix, module in model.named_modules():
        entry = _declared(module, prefix)
        if entry is not None:
            pass
        elif isinstance(module, SelfAttention) and hasattr(getattr(module, "linear_qkv", None), "weight"):
            entry = _qkv(module, prefix)
        elif isinstance(module, CrossAttention) and hasattr(getattr(module, "linear_kv", None), "weight"):
            entry = _kv(module, prefix)
        elif isinstance(module, MLP) and module.config.gated_linear_unit and hasattr(module.linear_fc1, "weight"):
            entry = _fc1(module, prefix, tp)
        if entry is None:
            continue
        name, layout = entry
        name = name.lstrip(".")
        param = params.get(name)
        if param is None or not param.requires_grad:
            continue
        layout.local.check(param)
        found[name] = layout
    return found
