"""The linear layers of a Wan block: megatron-core's column/row-parallel ones, or local ones.

Wan's linear layers all carry biases, which the project's other towers do not (``spec.py``
builds bias-free layers), so this package has its own small switch: given a tensor-parallel
group, megatron-core's ``ColumnParallelLinear`` (output split over the group: heads, FFN width)
and ``RowParallelLinear`` (input split, output all-reduced, bias added once); given none,
``local_layers.LocalLinear`` with a bias, the same layer at TP=1 with the same parameter names
(``weight`` ``[out, in]``, ``bias``), the same ``(output, None)`` return and the same initial
weights (the float32 master weight drawn with the config's init method, bias zero).
"""

from __future__ import annotations

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import init_method_normal
from torch import nn

from wallwm_pretrain.model.local_layers import LocalLinear
from wallwm_pretrain.model.spec import MASTER_WEIGHTS
from wallwm_pretrain.model.wan.config import WanConfig


def wan_transformer_config(cfg: WanConfig) -> TransformerConfig:
    """The megatron ``TransformerConfig`` the column/row-parallel linears read (dtype, init)."""
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        kv_channels=cfg.attention_head_dim,
        ffn_hidden_size=cfg.ffn_dim,
        add_bias_linear=True,
        init_method_std=cfg.init_std,
        **MASTER_WEIGHTS,
    )


def column_linear(in_features: int, out_features: int, config: TransformerConfig,
                  tp_group: torch.distributed.ProcessGroup | None) -> nn.Module:
    """Output split over ``tp_group`` (no gather); local when the group is None."""
    init = init_method_normal(config.init_method_std)
    if tp_group is None:
        return LocalLinear(in_features, out_features, config, init, bias=True)
    return ColumnParallelLinear(in_features, out_features, config=config, init_method=init, bias=True,
                                gather_output=False, skip_bias_add=False, tp_group=tp_group)


def row_linear(in_features: int, out_features: int, config: TransformerConfig,
               tp_group: torch.distributed.ProcessGroup | None) -> nn.Module:
    """Input split over ``tp_group``, output all-reduced (bias added once); local when None."""
    init = init_method_normal(config.init_method_std)
    if tp_group is None:
        return LocalLinear(in_features, out_features, config, init, bias=True)
    return RowParallelLinear(in_features, out_features, config=config, init_method=init, bias=True,
                             input_is_parallel=True, skip_bias_add=False, tp_group=tp_group)


def tp_size(tp_group: torch.distributed.ProcessGroup | None) -> int:
    """Ranks of the tensor-parallel group (1 without one)."""
    return 1 if tp_group is None else tp_group.size()


def tp_rank(tp_group: torch.distributed.ProcessGroup | None) -> int:
    """This rank's index in the tensor-parallel group (0 without one)."""
    return 0 if tp_group is None else tp_group.rank()
