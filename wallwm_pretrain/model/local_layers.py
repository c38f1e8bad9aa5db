"""Plain torch versions of the megatron-core layers the towers use, for a model with no process group.

Why hand-written. megatron-core's ``SelfAttention``, ``CrossAttention``, ``DotProductAttention``,
``ColumnParallelLinear``, ``RowParallelLinear`` and ``MLP`` take their tensor-parallel group
when they are constructed: from an explicit ``pg_collection`` / ``tp_group`` or, failing that,
from megatron's global parallel state. With neither (no ``torch.distributed``, no
``initialize_model_parallel``) they cannot be built. Export, evaluation, inference and unit
tests need the model in one process with no process group, so ``spec.py`` builds these layers
when it is given no ``ProcessGroupCollection``.

They are megatron's layers at TP=1, reproduced:

- names and shapes: ``linear_qkv``, ``linear_q``, ``linear_kv``, ``linear_proj``,
  ``linear_fc1``, ``linear_fc2`` (``[out, in]`` weights), each with megatron's empty
  ``_extra_state`` entry, so state dicts load either way with ``strict=True``;
- row layouts of the fused weights: ``linear_qkv`` per query group ``[q_1 .. q_{h/g}, k, v]``,
  ``linear_kv`` per head ``[k, v]``, ``linear_fc1`` ``[gate; up]`` (SiLU on the gate);
- initialisation: a float32 master weight drawn with the config's ``init_method`` (or
  ``output_layer_init_method`` for ``linear_proj`` and ``linear_fc2``), in megatron's order
  (an attention's ``linear_proj`` before its input projections), so the same seed gives the
  same weights in both;
- attention core: the same fused core as megatron's layers in this project
  (``attention_core.LocalFusedCoreAttention``, megatron's is ``FusedCoreAttention``).

``tests/model/test_local_spec.py`` holds them to megatron's outputs and gradients.

:class:`UnfusedLocalCoreAttention` is megatron's unfused ``DotProductAttention`` arithmetic
(a materialised ``[b * heads, sq, sk]`` score matrix). No tower builds it: it is the reference
the fused core is tested against and the baseline of ``bench/attention.py``.

Trade-off: a second implementation to keep in step with megatron-core (that test fails when
they drift). Only what ``spec.build_transformer_config`` sets is reproduced; other megatron
options (biases, output gates, dropout, query-key layer scaling, other softmax types, sliding
windows) raise rather than being silently ignored. No tensor or sequence parallelism, no fused
or Transformer Engine kernels (the attention core is torch's fused SDPA, not Transformer Engine's). The fused weights (QKV, KV, gate/up) declare their row layouts
(``fused_rows()``), so Muon splits them into logical matrices as it does megatron's.
"""

from __future__ import annotations

import math

import torch
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from wallwm_pretrain.model.attention_core import LocalFusedCoreAttention

MASKED_SCORE = -10000.0  # what megatron's attention_mask_func writes into masked scores


def check_supported(config: TransformerConfig) -> None:
    """Raise ValueError naming every config option these layers do not reproduce."""
    unsupported = {
        "add_bias_linear": config.add_bias_linear,
        "add_qkv_bias": config.add_qkv_bias,
        "attention_output_gate": config.attention_output_gate,
        "apply_query_key_layer_scaling": config.apply_query_key_layer_scaling,
        "attention_dropout": config.attention_dropout != 0.0,
        "softmax_type": config.softmax_type != "vanilla",
        "window_size": config.window_size is not None,
        "gated_linear_unit": not config.gated_linear_unit,
        "activation_func_clamp_value": config.activation_func_clamp_value is not None,
    }
    bad = [name for name, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ValueError(
            f"the local (no process group) layers do not reproduce megatron's {', '.join(bad)}; "
            "build the model with a ProcessGroupCollection to use megatron's layers"
        )


def _keep_empty_extra_state(state_dict, prefix, *args, **kwargs) -> None:
    # as megatron's linear layers do: a state dict of tensors only (an export) still loads strictly
    state_dict.setdefault(f"{prefix}_extra_state")


class LocalLinear(nn.Module):
    """megatron's ``ColumnParallelLinear`` / ``RowParallelLinear`` at TP=1: ``y = x W^T (+ b)``
    with ``W`` ``[out, in]``, returned as megatron's ``(output, None)`` (the bias, when there is
    one, added inside as megatron does with ``skip_bias_add=False``; it starts at zero)."""

    def __init__(
        self, in_features: int, out_features: int, config: TransformerConfig, init_method, bias: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=config.params_dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=config.params_dtype)) if bias else None
        if config.perform_initialization:
            # megatron's CPU initialisation: draw the float32 master weight, then copy (and cast)
            master = torch.empty(out_features, in_features, dtype=torch.float)
            init_method(master)
            with torch.no_grad():
                self.weight.copy_(master)
        self._register_load_state_dict_pre_hook(_keep_empty_extra_state)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        if self.bias is not None:
            return nn.functional.linear(x, self.weight, self.bias), None
        return torch.matmul(x, self.weight.t()), None

    def get_extra_state(self) -> None:
        """megatron's linear layers save an empty extra state (Transformer Engine's slot)."""
        return None

    def set_extra_state(self, state) -> None:
        """Ignored, as megatron's linear layers ignore it."""


class UnfusedLocalCoreAttention(nn.Module):
    """megatron's unfused ``DotProductAttention``: softmax(scale * q k^T, padding masked) v, the
    reference of the fused core (tests, benchmark); no tower builds it.

    Scores scaled inside ``baddbmm`` (``1/sqrt(head dim)`` unless the config sets
    ``softmax_scale``), masked key positions (``True`` in the ``[b, 1, 1, sk]`` padding mask)
    filled with -10000 before the softmax, so a row whose keys are all masked attends
    uniformly, as megatron's does. Inputs ``[s, b, heads, head dim]`` (keys and values may have
    fewer heads: query groups); output ``[sq, b, heads * head dim]``.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        check_supported(config)
        self.softmax_scale = (
            1.0 / math.sqrt(config.kv_channels) if config.softmax_scale is None else config.softmax_scale
        )

    def forward(self, query, key, value, attention_mask: torch.Tensor | None) -> torch.Tensor:
        sq, b, heads, hn = query.shape
        sk = key.shape[0]
        if heads // key.shape[2] > 1:  # query groups: each key/value head serves heads/groups queries
            key = key.repeat_interleave(heads // key.shape[2], dim=2)
            value = value.repeat_interleave(heads // value.shape[2], dim=2)
        q = query.reshape(sq, b * heads, hn).transpose(0, 1)  # [b * heads, sq, hn]
        k = key.reshape(sk, b * heads, hn).transpose(0, 1).transpose(1, 2)  # [b * heads, hn, sk]
        # the scale inside the matmul, as megatron does (beta=0 ignores the uninitialised input)
        scores = torch.baddbmm(q.new_empty(b * heads, sq, sk), q, k, beta=0.0, alpha=self.softmax_scale)
        scores = scores.view(b, heads, sq, sk)
        if attention_mask is not None:
            scores = scores.masked_fill(attention_mask, MASKED_SCORE)
        probs = torch.softmax(scores, dim=-1).view(b * heads, sq, sk)
        context = torch.bmm(probs, value.reshape(sk, b * heads, hn).transpose(0, 1))  # [b * heads, sq, hn]
        return context.view(b, heads, sq, hn).permute(2, 0, 1, 3).reshape(sq, b, heads * hn)


class LocalSelfAttention(nn.Module):
    """megatron's ``SelfAttention`` at TP=1: fused ``linear_qkv``, core, ``linear_proj``."""

    def __init__(self, config: TransformerConfig, core_attention: type = LocalFusedCoreAttention) -> None:
        super().__init__()
        check_supported(config)
        self.heads, self.groups, self.head_dim = config.num_attention_heads, config.num_query_groups, config.kv_channels
        # registration (and so initialisation) order is megatron's: core, linear_proj, linear_qkv
        self.core_attention = core_attention(config)
        self.linear_proj = LocalLinear(self.heads * self.head_dim, config.hidden_size, config,
                                       config.output_layer_init_method)
        self.linear_qkv = LocalLinear(config.hidden_size, (self.heads + 2 * self.groups) * self.head_dim, config,
                                      config.init_method)

    def fused_rows(self) -> tuple[str, tuple[str, ...], tuple[int, ...], int]:
        """The fused weight's row layout, for Muon's logical matrices: (layer, parts, rows per
        part, groups). megatron's module is recognised by its class; this one says it."""
        per_group = self.heads // self.groups
        return "linear_qkv", ("q", "k", "v"), (per_group * self.head_dim, self.head_dim, self.head_dim), self.groups

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None):
        mixed, _ = self.linear_qkv(hidden_states)
        s, b = mixed.shape[:2]
        per_group = self.heads // self.groups
        # rows per query group: [q_1 .. q_{heads/groups}, k, v], each head_dim long
        mixed = mixed.view(s, b, self.groups, (per_group + 2) * self.head_dim)
        query, key, value = torch.split(mixed, [per_group * self.head_dim, self.head_dim, self.head_dim], dim=3)
        query = query.reshape(s, b, self.heads, self.head_dim)
        return self.linear_proj(self.core_attention(query, key, value, attention_mask))


class LocalCrossAttention(nn.Module):
    """megatron's ``CrossAttention`` at TP=1: ``linear_q`` on the queries, fused ``linear_kv``
    (per head ``[k, v]``) on the context, core, ``linear_proj``."""

    def __init__(self, config: TransformerConfig, core_attention: type = LocalFusedCoreAttention) -> None:
        super().__init__()
        check_supported(config)
        if config.num_query_groups != config.num_attention_heads:
            raise ValueError("cross-attention has no query groups (megatron's neither): "
                             f"num_query_groups={config.num_query_groups} != heads={config.num_attention_heads}")
        self.heads, self.head_dim = config.num_attention_heads, config.kv_channels
        width = self.heads * self.head_dim
        self.core_attention = core_attention(config)
        self.linear_proj = LocalLinear(width, config.hidden_size, config, config.output_layer_init_method)
        self.linear_q = LocalLinear(config.hidden_size, width, config, config.init_method)
        self.linear_kv = LocalLinear(config.hidden_size, 2 * width, config, config.init_method)

    def fused_rows(self) -> tuple[str, tuple[str, ...], tuple[int, ...], int]:
        """``linear_kv``'s rows: ``[k, v]`` per head (see :meth:`LocalSelfAttention.fused_rows`)."""
        return "linear_kv", ("k", "v"), (self.head_dim, self.head_dim), self.heads

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                key_value_states: torch.Tensor | None = None):
        if key_value_states is None:
            raise ValueError("cross-attention needs key_value_states")
        mixed_kv, _ = self.linear_kv(key_value_states)
        sk, b = mixed_kv.shape[:2]
        key, value = mixed_kv.view(sk, b, self.heads, 2 * self.head_dim).split(self.head_dim, dim=-1)
        query, _ = self.linear_q(hidden_states)
        query = query.view(*query.shape[:2], self.heads, self.head_dim)
        return self.linear_proj(self.core_attention(query, key, value, attention_mask))


class LocalMLP(nn.Module):
    """megatron's gated ``MLP`` at TP=1: ``linear_fc1`` -> ``[gate; up]`` ->
    ``act(gate) * up`` -> ``linear_fc2``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        check_supported(config)
        self.activation, self.offset = config.activation_func, config.glu_linear_offset
        self.linear_fc1 = LocalLinear(config.hidden_size, 2 * config.ffn_hidden_size, config, config.init_method)
        self.linear_fc2 = LocalLinear(config.ffn_hidden_size, config.hidden_size, config,
                                      config.output_layer_init_method)

    def fused_rows(self) -> tuple[str, tuple[str, ...], tuple[int, ...], int]:
        """``linear_fc1``'s rows: ``[gate; up]`` (see :meth:`LocalSelfAttention.fused_rows`)."""
        half = self.linear_fc1.weight.shape[0] // 2
        return "linear_fc1", ("gate", "up"), (half, half), 1

    def forward(self, hidden_states: torch.Tensor):
        h, _ = self.linear_fc1(hidden_states)
        gate, up = torch.chunk(h, 2, dim=-1)
        return self.linear_fc2(self.activation(gate) * (up + self.offset))
