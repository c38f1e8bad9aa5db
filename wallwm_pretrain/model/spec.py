"""The attention and FFN modules of both towers: the one switch between megatron's layers and local ones.

Given megatron-core's ``ProcessGroupCollection`` (built by ``wallwm_pretrain.parallel``), the
towers are assembled from megatron-core's ``SelfAttention`` / ``CrossAttention`` with
``ColumnParallelLinear`` / ``RowParallelLinear`` projections and its gated ``MLP``, each handed
the collection (attention) or its tensor-parallel group (linear layers, MLP). At TP>1 they split
attention heads and FFN width over that group; at TP=1 they hold whole matrices. Given no
collection, the same modules are built from plain local layers (``local_layers.py``): the same
parameter names, layouts, initial weights and arithmetic as megatron's at TP=1, and no process
group or ``torch.distributed`` at all (export, evaluation, inference, unit tests). ``model/``
creates no process group and never imports ``wallwm_pretrain.parallel``; it only passes on the
groups it is given.

Trade-off: megatron's layers work sequence-first (``[s, b, h]``), so the whole model does too,
local layers included.

Every attention core, in both kinds of layers, is the fused one of ``attention_core.py``
(torch's ``scaled_dot_product_attention`` with a broadcast key-padding mask; no ``[s, s]``
score matrix). megatron's unfused ``DotProductAttention`` is built only by the tests that
compare against it. ``recompute_core=True`` swaps the core for one whose activations are
rebuilt in backward (``model.recompute=selective``, see ``recompute.py``).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import (
    CrossAttention,
    CrossAttentionSubmodules,
    SelfAttention,
    SelfAttentionSubmodules,
)
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.attention_core import FusedCoreAttention, LocalFusedCoreAttention
from wallwm_pretrain.model.local_layers import LocalCrossAttention, LocalMLP, LocalSelfAttention
from wallwm_pretrain.model.recompute import RecomputedCoreAttention, RecomputedLocalCoreAttention


# What every megatron config of the project shares: no dropout, and float32 master weights drawn
# whole on CPU and then split, so a TP>1 model starts from exactly the weights of the TP=1 model
# (what the equivalence tests rely on).
MASTER_WEIGHTS = dict(hidden_dropout=0.0, attention_dropout=0.0, use_cpu_initialization=True,
                      params_dtype=torch.float32, bf16=False)


def build_transformer_config(cfg: ModelConfig, num_layers: int | None = None) -> TransformerConfig:
    """The single megatron ``TransformerConfig`` threaded through every block of both towers."""
    return TransformerConfig(
        num_layers=num_layers or cfg.num_layers,
        hidden_size=cfg.hidden_size,
        num_attention_heads=cfg.num_heads,
        ffn_hidden_size=cfg.ffn_hidden_size,
        gated_linear_unit=True,  # the paper's gated FFN (SwiGLU)
        activation_func=F.silu,
        add_bias_linear=False,
        init_method_std=cfg.init_std,
        **MASTER_WEIGHTS,
    )


def _core(recompute_core: bool, split_keys: bool = False):
    core = RecomputedCoreAttention if recompute_core else FusedCoreAttention
    return partial(core, split_keys=True) if split_keys else core


def _local_core(recompute_core: bool) -> type:
    return RecomputedLocalCoreAttention if recompute_core else LocalFusedCoreAttention


def self_attention(
    config: TransformerConfig,
    layer_number: int,
    recompute_core: bool = False,
    pg_collection: ProcessGroupCollection | None = None,
    split_sequence: bool = False,
) -> nn.Module:
    """Self-attention with padding masks: megatron's with ``pg_collection``, else the local one.

    ``split_sequence``: the tokens are split over the context-parallel group of
    ``pg_collection`` (the towers' tokens, not the caption's): the core exchanges heads for
    tokens (``attention_core.split_sequence_attention``)."""
    if pg_collection is None:
        return LocalSelfAttention(config, _local_core(recompute_core))
    return SelfAttention(
        config,
        SelfAttentionSubmodules(
            linear_qkv=ColumnParallelLinear,
            core_attention=_core(recompute_core, split_sequence),
            linear_proj=RowParallelLinear,
            q_layernorm=IdentityOp,
            k_layernorm=IdentityOp,
        ),
        layer_number=layer_number,
        attn_mask_type=AttnMaskType.padding,
        pg_collection=pg_collection,  # SelfAttention hands its tp group to both projections
    )


def cross_attention(
    config: TransformerConfig,
    layer_number: int,
    recompute_core: bool = False,
    pg_collection: ProcessGroupCollection | None = None,
    split_sequence: bool = False,
) -> nn.Module:
    """Cross-attention with padding masks: megatron's with ``pg_collection``, else the local one.

    ``split_sequence``: queries and keys are both split over the context-parallel group (the
    action tower's coupling to the video tokens); keys that every rank holds whole (caption,
    state token) leave it False: queries are independent, nothing is exchanged."""
    if pg_collection is None:
        return LocalCrossAttention(config, _local_core(recompute_core))
    # megatron's CrossAttention passes the tp group to linear_proj but not to linear_q and
    # linear_kv, which would then fall back to the global group: bind it here
    column = partial(ColumnParallelLinear, tp_group=pg_collection.tp)
    return CrossAttention(
        config,
        CrossAttentionSubmodules(
            linear_q=column,
            linear_kv=column,
            core_attention=_core(recompute_core, split_sequence),
            linear_proj=RowParallelLinear,
        ),
        layer_number=layer_number,
        attn_mask_type=AttnMaskType.padding,
        pg_collection=pg_collection,
    )


def gated_mlp(config: TransformerConfig, pg_collection: ProcessGroupCollection | None = None) -> nn.Module:
    """The gated (SwiGLU) FFN: megatron's with ``pg_collection``, else the local one."""
    if pg_collection is None:
        return LocalMLP(config)
    return MLP(
        config,
        MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
        ffn_hidden_size=config.ffn_hidden_size,
        tp_group=pg_collection.tp,  # MLP passes it on to linear_fc1 and linear_fc2
    )
