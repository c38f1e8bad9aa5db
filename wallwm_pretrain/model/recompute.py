"""Activation recomputation (``model.recompute``): trade backward compute for activation memory.

- ``full``: a coupled layer keeps only its input :class:`Streams`; its activations are dropped
  after the forward and rebuilt by running the layer again in backward. Memory per layer falls
  to the size of its input; the cost is one more forward of the towers (~+33 % step FLOPs).
- ``selective``: only the attention cores (scores, softmax, weighted sum) are recomputed. Their
  score matrices grow with sequence length squared ([b * heads, s_q, s_k]) and dominate
  activation memory for long events, yet cost few FLOPs to rebuild compared with the
  projections and FFNs, which keep their activations. Both attention cores have a recomputed
  form: megatron's (``RecomputedCoreAttention``) and the local one of a model built without
  process groups (``RecomputedLocalCoreAttention``).

Both use ``torch.utils.checkpoint`` (non-reentrant) rather than megatron-core's
``tensor_parallel.checkpoint``: it runs unchanged on CPU and GPU (megatron's saves and restores
CUDA RNG states, which do not exist on CPU), accepts the layer's dataclass input, and with
dropout at 0 there is no RNG stream to replay. What it does not do is megatron's
``distribute_saved_activations`` (splitting the kept inputs over tensor-parallel ranks), which
only pays off with sequence parallelism, a GPU-only option here.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.dot_product_attention import DotProductAttention
from torch import nn
from torch.utils.checkpoint import checkpoint

from wallwm_pretrain.model.local_layers import LocalCoreAttention

RECOMPUTE_MODES = ("none", "full", "selective")


def _recomputed(core: nn.Module, run, *args):
    """``run(*args)``, its activations rebuilt in backward when ``core`` trains with grad on."""
    if not (core.training and torch.is_grad_enabled()):
        return run(*args)
    return checkpoint(run, *args, use_reentrant=False)


class RecomputedCoreAttention(DotProductAttention):
    """megatron's attention core whose activations are rebuilt in backward (``selective``)."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        return _recomputed(self, super().forward, query, key, value, attention_mask, attn_mask_type,
                           attention_bias, packed_seq_params)


class RecomputedLocalCoreAttention(LocalCoreAttention):
    """The local attention core whose activations are rebuilt in backward (``selective``)."""

    def forward(self, query, key, value, attention_mask):
        return _recomputed(self, super().forward, query, key, value, attention_mask)


def run_layer(layer: nn.Module, streams, recompute: str):
    """``layer(streams)``, recomputed in backward when ``recompute == "full"`` and training."""
    if recompute == "full" and layer.training and torch.is_grad_enabled():
        return checkpoint(layer, streams, use_reentrant=False)
    return layer(streams)
