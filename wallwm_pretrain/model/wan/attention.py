"""Wan's attention layers: q/k RMS norm across all heads, 3-D RoPE, a fused attention core.

Layout is megatron's, sequence first: hidden states ``[s, b, hidden]``. The projections are
separate column-parallel ``linear_q``, ``linear_k``, ``linear_v`` (each a plain matrix whose
rows are split over the tensor-parallel group by heads, so Muon and the canonical checkpoint
layout see three ordinary column-parallel matrices) and a row-parallel ``linear_proj``, all with
biases, as in Wan.

Wan normalises q and k with one RMS norm over the *whole* projection (all heads together,
``nn.RMSNorm(heads * head_dim)``), not per head. Under tensor parallelism each rank holds only
its heads, so the sum of squares is all-reduced over the group before normalising
(:class:`AllHeadsRMSNorm`); its weight is split like the heads and marked as megatron marks a
column-parallel weight, so the canonical layout gathers and cuts it like one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from wallwm_pretrain.model.attention_core import fused_attention, key_valid_from_mask, split_sequence_attention
from wallwm_pretrain.model.sequence_split import SequenceSplit
from wallwm_pretrain.model.wan.layers import column_linear, row_linear, tp_size
from wallwm_pretrain.model.wan.rope import apply_rope


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention core of every Wan attention: the project's fused core
    (``model/attention_core.py``), softmax(q k^T / sqrt(d)) v through torch's fused kernel.

    Args:
        query: ``[sq, b, heads, d]``; key, value: ``[sk, b, heads, d]``.
        key_padding_mask: optional bool ``[b, 1, 1, sk]``, ``True`` = padding (megatron's
            convention), broadcast over heads and queries; never an ``[sq, sk]`` matrix. A row
            whose keys are all padding attends uniformly (as megatron's core does); its output
            is padding anyway.

    Returns:
        ``[sq, b, heads * d]``.
    """
    key_valid = key_valid_from_mask(key_padding_mask, query.shape[1], key.shape[0])
    return fused_attention(query, key, value, key_valid).type_as(query)


class _SumOverGroup(torch.autograd.Function):
    """All-reduce (sum) forward and backward. megatron's ``reduce_from_tensor_model_parallel_region``
    passes the gradient through unchanged, which is right only when what follows is replicated;
    here every rank normalises its own heads with the sum, so the gradients add up too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class AllHeadsRMSNorm(nn.Module):
    """``nn.RMSNorm(heads * head_dim)`` over the last dim, of which this rank holds a 1/tp slice.

    Args:
        width: the whole normalised width (all heads).
        eps: added to the mean square.
        tp_group: the tensor-parallel group (None: this rank holds the whole width).
    """

    def __init__(self, width: int, eps: float, tp_group=None) -> None:
        super().__init__()
        self.width, self.eps, self.tp_group = width, eps, tp_group
        size = tp_size(tp_group)
        if width % size:
            raise ValueError(f"q/k norm width {width} does not split over tp={size}")
        self.weight = nn.Parameter(torch.ones(width // size))
        if tp_group is not None:
            set_tensor_model_parallel_attributes(self.weight, True, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        sum_sq = xf.pow(2).sum(-1, keepdim=True)
        if self.tp_group is not None and tp_size(self.tp_group) > 1:
            sum_sq = _SumOverGroup.apply(sum_sq, self.tp_group)
        normed = xf * torch.rsqrt(sum_sq / self.width + self.eps)
        return (normed * self.weight.float()).type_as(x)


class WanAttention(nn.Module):
    """Wan's attention (``attn1``: self-attention with RoPE; ``attn2``: to the text states).

    Args:
        config: megatron config (hidden size, heads, head dim, init).
        eps: the q/k norm's epsilon.
        tp_group: tensor-parallel group (None: local layers).
        split: the context-parallel split of the video tokens, for an attention over them
            (self-attention, cross-view): its queries and keys are this rank's tokens and the
            core exchanges heads for tokens (``attention_core.split_sequence_attention``).
            None: keys whole on every rank (the text) or no context parallelism.
    """

    def __init__(self, config: TransformerConfig, eps: float, tp_group=None, split: SequenceSplit | None = None) -> None:
        super().__init__()
        self.split = split
        hidden, heads, head_dim = config.hidden_size, config.num_attention_heads, config.kv_channels
        width = heads * head_dim
        if heads % tp_size(tp_group):
            raise ValueError(f"{heads} attention heads do not split over tp={tp_size(tp_group)}")
        self.local_heads, self.head_dim = heads // tp_size(tp_group), head_dim
        self.linear_q = column_linear(hidden, width, config, tp_group)
        self.linear_k = column_linear(hidden, width, config, tp_group)
        self.linear_v = column_linear(hidden, width, config, tp_group)
        self.q_norm = AllHeadsRMSNorm(width, eps, tp_group)
        self.k_norm = AllHeadsRMSNorm(width, eps, tp_group)
        self.linear_proj = row_linear(width, hidden, config, tp_group)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.local_heads, self.head_dim))

    def forward(self, hidden_states: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                key_padding_mask: torch.Tensor | None = None, regroup=None) -> torch.Tensor:
        """Attention of ``hidden_states`` ``[s, b, h]`` to itself (``context`` None) or to
        ``context`` ``[sk, b, h]``; ``rope`` (cos, sin) rotates q and k (self-attention).
        Under a split, ``rope`` is this rank's tokens' and ``key_padding_mask`` the whole padded
        sequence's; ``regroup`` as :func:`split_sequence_attention` takes it."""
        kv_in = hidden_states if context is None else context
        q = self._heads(self.q_norm(self.linear_q(hidden_states)[0]))
        k = self._heads(self.k_norm(self.linear_k(kv_in)[0]))
        v = self._heads(self.linear_v(kv_in)[0])
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.split is not None and context is None:
            key_valid = key_valid_from_mask(key_padding_mask, q.shape[1], k.shape[0] * self.split.size)
            out = split_sequence_attention(q, k, v, self.split, key_valid, regroup=regroup).type_as(q)
            return self.linear_proj(out)[0]
        return self.linear_proj(attend(q, k, v, key_padding_mask))[0]
