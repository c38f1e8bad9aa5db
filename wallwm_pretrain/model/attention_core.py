"""The one fused attention core of every tower: softmax(scale * q k^T, key padding) v without a score matrix.

Every attention of the model (self-attention of the video and action towers, the coupling
cross-attention, the state and caption cross-attentions, the caption encoder) runs its core
through :func:`fused_attention`, which calls torch's ``scaled_dot_product_attention`` (SDPA):
a flash kernel on CPU, flash / memory-efficient / cuDNN kernels on GPU, picked by torch. The
kernels work block by block with an online softmax, so no ``[b * heads, s_q, s_k]`` score or
probability matrix is ever held: activation memory grows linearly with sequence length
(``bench/attention.py``, ``docs/benchmarks.md``). The key-padding mask goes in as a broadcast
``[b, 1, 1, s_k]`` boolean, never expanded to ``[s_q, s_k]``.

Three ways in, all the same arithmetic:

- :func:`fused_attention` ``(query, key, value, key_valid)``: a plain function for any tower;
- :class:`FusedCoreAttention`: a drop-in ``core_attention`` for megatron-core's
  ``SelfAttention`` / ``CrossAttention`` (the constructor and ``forward`` of megatron's
  ``DotProductAttention``; heads split over the tensor-parallel group as megatron's);
- :class:`LocalFusedCoreAttention`: the same for the local layers of a model built with no
  process group (``local_layers.py``).

Semantics kept from megatron's unfused ``DotProductAttention``: scale ``1/sqrt(head dim)``
unless the config sets ``softmax_scale``; a masked key (``True`` in megatron's mask) gets no
weight; key/value heads shared by ``heads / query groups`` queries each; and a query whose
keys are *all* masked attends uniformly to every key (megatron writes -10000 into every score
of such a row, so its softmax is flat) instead of producing NaN. How that last case is kept
finite here: a sample with no valid key is handed to the kernel with all its keys unmasked (so
no backend ever sees an all-masked row, which some turn into NaN and others into 0), and its
output is then replaced by the mean of its values, which is exactly the flat softmax's result
(gradient: ``1/s_k`` to every value, none to queries and keys, as in megatron's). Partially
masked rows are masked exactly (the kernel gives masked keys zero weight; megatron's -10000
gives ``exp(-10000)``, which is 0 in every float format). With a single key (the action tower's
state token) the softmax is 1 whatever the scores: that case runs as two ``[s_q, 1]``-sized
matmuls and a softmax instead of the kernel, so the query and key gradients are exactly zero
there, as megatron's.

Context parallelism (``sequence_split.py``): an attention whose queries and keys are split
over the context-parallel ranks (``split`` given, :func:`split_sequence_attention`) trades the
sequence split for a head split by an all-to-all before the kernel and back after it (Ulysses);
the key-padding mask is then that of the whole padded key sequence. An attention whose keys are
whole on every rank (captions, the state token) needs no exchange: its queries are independent.
megatron's own context parallelism (``context_parallel_size`` in the layer config, which needs
Transformer Engine) stays refused; the CP group reaches the core in the process-group collection.

Trade-offs: what the kernels do not take is refused rather than emulated: attention dropout
(torch's RNG stream, not megatron's CUDA tracker), attention biases, causal or sliding-window
masks, packed sequences, megatron's context-parallel config, softmax types other than vanilla. Query groups
are expanded to full heads before the call (``repeat_interleave``, as megatron does; linear
memory) because not every GPU kernel that takes a mask also takes grouped keys. Which kernel
runs is torch's choice; on this CPU it is ``_scaled_dot_product_flash_attention_for_cpu`` in
forward and backward (``tests/model/test_attention_core.py`` checks it). On a GPU a boolean
mask rules out the FlashAttention-2 kernel, leaving torch the memory-efficient or cuDNN one;
which one it picks there has not been measured on the (CPU-only) development machine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.utils import divide
from torch import nn

from wallwm_pretrain.model.sequence_split import SequenceSplit


def fused_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """softmax(scale * q k^T) v over the valid keys, sequence-first as megatron's cores.

    Args:
        query: ``[s_q, b, heads, head_dim]``.
        key, value: ``[s_k, b, groups, head_dim]``; ``heads`` must be a multiple of ``groups``
            (each key/value head serves ``heads / groups`` query heads).
        key_valid: ``[b, s_k]`` bool, True on real keys; None = every key is real. A sample
            with no valid key attends uniformly to all its keys (see the module docstring).
        softmax_scale: the score scale; None = ``1 / sqrt(head_dim)``.

    Returns:
        ``[s_q, b, heads * head_dim]``.
    """
    sq, b, heads, hn = query.shape
    sk, groups = key.shape[0], key.shape[2]
    if key.shape != (sk, b, groups, hn) or value.shape != key.shape:
        raise ValueError(f"query {tuple(query.shape)} [s_q, b, heads, head_dim] needs key and value of shape "
                         f"[s_k, {b}, groups, {hn}]; got key {tuple(key.shape)}, value {tuple(value.shape)}")
    if heads % groups:
        raise ValueError(f"{heads} query heads cannot share {groups} key/value heads: heads must be a multiple")
    q, k, v = (x.permute(1, 2, 0, 3) for x in (query, key, value))  # [b, heads or groups, s, head_dim]
    if groups != heads:
        k, v = k.repeat_interleave(heads // groups, dim=1), v.repeat_interleave(heads // groups, dim=1)
    mask = has_key = None
    if key_valid is not None:
        if key_valid.dtype != torch.bool or key_valid.shape != (b, sk):
            raise ValueError(f"key_valid must be a bool [b, s_k] = [{b}, {sk}] tensor, "
                             f"got {key_valid.dtype} {tuple(key_valid.shape)}")
        has_key = key_valid.any(dim=1)  # [b]
        # open every key of a sample that has none (replaced below): no all-masked row reaches the kernel
        mask = (key_valid | ~has_key[:, None])[:, None, None, :]  # [b, 1, 1, s_k], broadcast over heads and queries
    if sk == 1:
        # One key (the state token): its softmax weight is exactly 1 whatever the score, masked
        # or not (an all-masked row is uniform over its one key), and the softmax backward gives
        # queries and keys exactly zero gradient, as in megatron's core. The fused kernel's
        # backward would leave rounding noise (~1e-11) there, which Muon's normalisation turns
        # into real updates of weights that cannot change the output. The scores are [s_q, 1]:
        # nothing quadratic is held.
        scale = 1.0 / math.sqrt(hn) if softmax_scale is None else softmax_scale
        probs = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * scale, dim=-1)  # [b, heads, s_q, 1]
        out = torch.matmul(probs, v)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=softmax_scale)  # [b, heads, s_q, hn]
    if has_key is not None and sk > 1:
        # no valid key: megatron's flat softmax over all (masked) keys, i.e. the mean of the values
        out = torch.where(has_key[:, None, None, None], out, v.mean(dim=2, keepdim=True))
    return out.permute(2, 0, 1, 3).reshape(sq, b, heads * hn)


def split_sequence_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    split: SequenceSplit,
    key_valid: torch.Tensor | None = None,
    softmax_scale: float | None = None,
    regroup=None,
) -> torch.Tensor:
    """:func:`fused_attention` of queries and keys split along the sequence over the CP ranks.

    Args:
        query: ``[s_q / cp, b, heads, head_dim]`` this rank's queries (all heads).
        key, value: ``[s_k / cp, b, groups, head_dim]`` this rank's keys and values.
        split: the context-parallel split (``s_q`` and ``s_k`` are the padded lengths).
        key_valid: ``[b, s_k]`` real keys of the *whole* padded key sequence, in the order the
            exchange lays the ranks' pieces one after another; None = all real.
        regroup: optional ``(to_groups, from_groups)``: after the exchange, ``to_groups`` turns
            the whole sequences ``[s, b, h, d]`` into the sequences attention runs over (e.g. the
            views of one latent frame), ``from_groups`` turns the core's output back.

    Returns:
        ``[s_q / cp, b, heads * head_dim]``, this rank's queries.
    """
    heads, groups, hn = query.shape[2], key.shape[2], query.shape[3]
    cp = split.size
    if heads % cp or groups % cp:
        raise ValueError(f"{heads} query and {groups} key/value heads on this rank do not split over "
                         f"context-parallel size {cp} (Ulysses gives every rank whole heads)")
    q, k, v = split.to_heads(query), split.to_heads(key), split.to_heads(value)  # [s, b, h / cp, d]
    if regroup is not None:
        q, k, v = (regroup[0](x) for x in (q, k, v))
    out = fused_attention(q, k, v, key_valid, softmax_scale)  # [s_q, b, heads / cp * hn]
    if regroup is not None:
        out = regroup[1](out)
    out = split.to_sequence(out.unflatten(-1, (heads // cp, hn)))  # [s_q / cp, b, heads, hn]
    return out.flatten(2)


def key_valid_from_mask(attention_mask: torch.Tensor | None, batch: int, keys: int) -> torch.Tensor | None:
    """megatron's key-padding mask ``[b, 1, 1, s_k]`` (True = masked out) -> ``[b, s_k]`` (True = real key).

    Size-1 batch or key dims broadcast. A mask with a query dim (``[.., s_q, s_k]``) or of
    another dtype is refused: the fused core takes key padding only.
    """
    if attention_mask is None:
        return None
    if (attention_mask.dtype != torch.bool or attention_mask.dim() != 4 or attention_mask.shape[1:3] != (1, 1)
            or attention_mask.shape[0] not in (1, batch) or attention_mask.shape[3] not in (1, keys)):
        raise ValueError(
            f"the fused attention core takes a bool key-padding mask [b, 1, 1, s_k] = [{batch}, 1, 1, {keys}] "
            f"(True = masked), got {attention_mask.dtype} {tuple(attention_mask.shape)}"
        )
    return (~attention_mask[:, 0, 0, :]).expand(batch, keys)


def check_core_supported(config: TransformerConfig, attention_dropout: float | None = None) -> None:
    """Raise ValueError naming every config option the fused core does not reproduce."""
    dropout = config.attention_dropout if attention_dropout is None else attention_dropout
    unsupported = {
        "attention_dropout": dropout != 0.0,
        "apply_query_key_layer_scaling": config.apply_query_key_layer_scaling,
        "softmax_type": config.softmax_type != "vanilla",
        "window_size": config.window_size is not None,
        "context_parallel_size": config.context_parallel_size != 1,
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ValueError(f"the fused attention core does not reproduce megatron's {', '.join(bad)}")


def _scale(config: TransformerConfig, softmax_scale: float | None) -> float:
    if softmax_scale is not None:
        return softmax_scale
    return 1.0 / math.sqrt(config.kv_channels) if config.softmax_scale is None else config.softmax_scale


class FusedCoreAttention(MegatronModule):
    """megatron-core's ``DotProductAttention`` contract on :func:`fused_attention`.

    Built by megatron's ``SelfAttention`` / ``CrossAttention`` as their ``core_attention``
    submodule, with the same keyword arguments. ``forward`` takes this rank's heads,
    ``[s_q, b, heads / tp, head_dim]`` queries and ``[s_k, b, groups / tp, head_dim]`` keys and
    values, and megatron's key-padding mask ``[b, 1, 1, s_k]`` (True = masked); it returns
    ``[s_q, b, heads / tp * head_dim]``. Attention heads are independent, so a tensor-parallel
    rank computes its heads with no communication, as megatron's core does.

    ``split_keys`` (bound by ``spec.py``): this attention's queries and keys are split along
    the sequence over the context-parallel group of ``pg_collection`` (self-attention of the
    towers, the coupling to the video); its mask is then of the whole padded key sequence and
    the core exchanges heads for tokens (:func:`split_sequence_attention`). At cp = 1 or
    without ``split_keys`` (keys whole on every rank: caption, state token) the core is local.
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection: ProcessGroupCollection | None = None,
        split_keys: bool = False,
    ) -> None:
        super().__init__(config=config)
        check_core_supported(config, attention_dropout)
        if attn_mask_type not in (AttnMaskType.padding, AttnMaskType.no_mask):
            raise ValueError(f"the fused attention core takes key-padding masks only, not {attn_mask_type}")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        self.pg_collection, self.tp_group = pg_collection, pg_collection.tp
        self.layer_number, self.attn_mask_type, self.attention_type = max(1, layer_number), attn_mask_type, attention_type
        tp = self.tp_group.size()
        # megatron's per-partition counts (SelfAttention raises num_query_groups to tp when it is below)
        self.num_attention_heads_per_partition = divide(config.num_attention_heads, tp)
        self.num_query_groups_per_partition = divide(config.num_query_groups, tp)
        self.hidden_size_per_attention_head = config.kv_channels
        self.softmax_scale = _scale(config, softmax_scale)
        self.split = SequenceSplit.of(pg_collection) if split_keys else None

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("the fused attention core takes neither packed sequences nor attention biases")
        if attn_mask_type not in (None, AttnMaskType.padding, AttnMaskType.no_mask):
            raise ValueError(f"the fused attention core takes key-padding masks only, not {attn_mask_type}")
        heads, groups = self.num_attention_heads_per_partition, self.num_query_groups_per_partition
        if query.shape[2] != heads or key.shape[2] != groups:
            raise ValueError(f"this rank holds {heads} query and {groups} key/value heads; got query "
                             f"{tuple(query.shape)} and key {tuple(key.shape)} ([s, b, heads, head_dim])")
        if self.split is not None:
            key_valid = key_valid_from_mask(attention_mask, query.shape[1], key.shape[0] * self.split.size)
            return split_sequence_attention(query, key, value, self.split, key_valid, self.softmax_scale)
        key_valid = key_valid_from_mask(attention_mask, query.shape[1], key.shape[0])
        return fused_attention(query, key, value, key_valid, self.softmax_scale)


class LocalFusedCoreAttention(nn.Module):
    """:class:`FusedCoreAttention` for the local layers (no process group, all heads in one process):
    ``forward(query, key, value, attention_mask)`` with megatron's shapes and mask."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        check_core_supported(config)
        self.softmax_scale = _scale(config, None)

    def forward(self, query, key, value, attention_mask: torch.Tensor | None) -> torch.Tensor:
        key_valid = key_valid_from_mask(attention_mask, query.shape[1], key.shape[0])
        return fused_attention(query, key, value, key_valid, self.softmax_scale)
