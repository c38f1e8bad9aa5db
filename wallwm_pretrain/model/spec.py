"""megatron-core building blocks for both towers: the one switch between local and TP layers.

The towers are assembled from megatron-core's ``SelfAttention`` / ``CrossAttention`` with
``ColumnParallelLinear`` / ``RowParallelLinear`` projections and its gated ``MLP``. At TP=1
these are plain local layers; at TP>1 the same modules split attention heads and FFN width over
the tensor-parallel group that ``wallwm_pretrain.parallel`` created. Nothing in ``model/``
creates or names a process group.

Trade-off: megatron's layers work sequence-first (``[s, b, h]``), so the whole model does too.

``recompute_core=True`` swaps the attention core for one whose activations are rebuilt in
backward (``model.recompute=selective``, see ``recompute.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import (
    CrossAttention,
    CrossAttentionSubmodules,
    SelfAttention,
    SelfAttentionSubmodules,
)
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.transformer_config import TransformerConfig

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.recompute import RecomputedCoreAttention


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
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=cfg.init_std,
        # Master weights are drawn whole on CPU and then split, so a TP>1 model starts from
        # exactly the weights of the TP=1 model (what the equivalence tests rely on).
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        bf16=False,
    )


def _core(recompute_core: bool) -> type:
    return RecomputedCoreAttention if recompute_core else DotProductAttention


def self_attention(config: TransformerConfig, layer_number: int, recompute_core: bool = False) -> SelfAttention:
    return SelfAttention(
        config,
        SelfAttentionSubmodules(
            linear_qkv=ColumnParallelLinear,
            core_attention=_core(recompute_core),
            linear_proj=RowParallelLinear,
            q_layernorm=IdentityOp,
            k_layernorm=IdentityOp,
        ),
        layer_number=layer_number,
        attn_mask_type=AttnMaskType.padding,
    )


def cross_attention(config: TransformerConfig, layer_number: int, recompute_core: bool = False) -> CrossAttention:
    return CrossAttention(
        config,
        CrossAttentionSubmodules(
            linear_q=ColumnParallelLinear,
            linear_kv=ColumnParallelLinear,
            core_attention=_core(recompute_core),
            linear_proj=RowParallelLinear,
        ),
        layer_number=layer_number,
        attn_mask_type=AttnMaskType.padding,
    )


def gated_mlp(config: TransformerConfig) -> MLP:
    return MLP(config, MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear))
