"""Activation recomputation (``model.recompute``): trade backward compute for activation memory.

- ``full``: a coupled layer keeps only its input :class:`Streams`; its activations are dropped
  after the forward and rebuilt by running the layer again in backward. Memory per layer falls
  to the size of its input; the cost is one more forward of the towers (~+33 % step FLOPs).
- ``selective``: only the attention cores (scores, softmax, weighted sum) are recomputed; the
  projections and FFNs keep their activations. With the fused core (``attention_core.py``)
  no score matrix is kept anyway: what a core keeps for backward is its output and one
  log-sum-exp per query and head (linear in sequence length), so ``selective`` saves little
  memory for its extra core forward; it stays for unfused or custom cores and for parity with
  megatron's option. Both kinds of layers have a recomputed core: megatron's
  (``RecomputedCoreAttention``) and the local one of a model built without process groups
  (``RecomputedLocalCoreAttention``), both the fused core underneath.

Both use ``torch.utils.checkpoint`` (non-reentrant) rather than megatron-core's
``tensor_parallel.checkpoint``: it runs unchanged on CPU and GPU (megatron's saves and restores
CUDA RNG states, which do not exist on CPU), accepts the layer's dataclass input, and with
dropout at 0 there is no RNG stream to replay. What it does not do is megatron's
``distribute_saved_activations`` (splitting the kept inputs over tensor-parallel ranks), which
only pays off with sequence parallelism, a GPU-only option here.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from wallwm_pretrain.model.attention_core import FusedCoreAttention, LocalFusedCoreAttention

RECOMPUTE_MODES = ("none", "full", "selective")


def _recomputed(core: nn.Module, run, *args):
    """``run(*args)``, its activations rebuilt in backward when ``core`` trains with grad on."""
    if not (core.training and torch.is_grad_enabled()):
        return run(*args)
    return checkpoint(run, *args, use_reentrant=False)


class RecomputedCoreAttention(FusedCoreAttention):
    """The fused core of megatron's layers, whose activations are rebuilt in backward (``selective``)."""

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        return _recomputed(self, super().forward, query, key, value, attention_mask, attn_mask_type,
                           attention_bias, packed_seq_params)


class RecomputedLocalCoreAttention(LocalFusedCoreAttention):
    """The fused core of the local layers, whose activations are rebuilt in backward (``selective``)."""

    def forward(self, query, key, value, attention_mask):
        return _recomputed(self, super().forward, query, key, value, attention_mask)


def run_layer(layer: nn.Module, streams, recompute: str, *more):
    """``layer(streams, *more)``, recomputed in backward when ``recompute == "full"`` and training."""
    if recompute == "full" and layer.training and torch.is_grad_enabled():
        return checkpoint(layer, streams, *more, use_reentrant=False)
    return layer(streams, *more)
