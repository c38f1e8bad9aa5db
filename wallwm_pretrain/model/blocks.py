"""The blocks of the dual-tower denoiser and the coupled layer that pairs them.

A *coupled layer* holds video block i and action block i. The action block reads the output of
the video block of the same layer (one-way coupling: video never reads actions), so a pipeline
rank that holds whole coupled layers never sends coupling traffic to another; what flows
between layers is :class:`Streams`, which carries both towers' hidden states and the
conditioning every layer reads.

Context parallelism (``sequence_split.py``): the video and action tokens of :class:`Streams`
may be one context-parallel rank's piece of each sample's sequence; the self-attentions and the
coupling then exchange heads for tokens in their core, and their masks are those of the whole
padded sequences. The caption encoder's tokens and the state token are never split.

The attention and FFN modules come from ``spec.py``: megatron-core's layers when the model is
given a ``ProcessGroupCollection``, local layers with the same parameters otherwise. Norms and
the AdaLN modulation are small plain layers, replicated over tensor-parallel ranks.

Between pipeline ranks :class:`Streams` travels as ONE ``[s, b, h]`` tensor (what megatron's
point-to-point schedule sends): :meth:`Streams.pack` stacks, along the sequence, the video
tokens, the action tokens, the caption states, the state token and the two timestep
embeddings; :meth:`Streams.unpack` cuts them apart again. The masks do not travel: they follow
from the batch's lengths and caption padding, which every pipeline rank reads anyway.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from wallwm_pretrain.model.spec import cross_attention, gated_mlp, self_attention


def key_padding_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, Sk] bool (True = real token) -> megatron mask [B, 1, 1, Sk] (True = masked out)."""
    return (~valid)[:, None, None, :]


@dataclass
class Streams:
    """Everything that passes from one coupled layer to the next ([seq, batch, hidden])."""

    video: torch.Tensor
    action: torch.Tensor
    text: torch.Tensor
    state: torch.Tensor
    temb_video: torch.Tensor  # [B, H]
    temb_action: torch.Tensor  # [B, H]
    video_mask: torch.Tensor  # megatron key-padding masks, see key_padding_mask
    action_mask: torch.Tensor
    text_mask: torch.Tensor

    def with_towers(self, video: torch.Tensor, action: torch.Tensor) -> "Streams":
        return replace(self, video=video, action=action)

    def pack(self) -> torch.Tensor:
        """[Sv + Sa + L + 3, B, H]: video, action, caption, state token, t_video, t_action."""
        return torch.cat(
            [self.video, self.action, self.text, self.state, self.temb_video[None], self.temb_action[None]]
        )

    @classmethod
    def unpack(
        cls,
        packed: torch.Tensor,
        video_len: int,
        action_len: int,
        video_mask: torch.Tensor,
        action_mask: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> "Streams":
        """Inverse of :meth:`pack`; the masks come from the batch, not from the wire."""
        text_len = text_mask.shape[-1]
        expected = video_len + action_len + text_len + 3
        if packed.shape[0] != expected:
            raise ValueError(
                f"a packed pipeline input of {packed.shape[0]} positions does not match the batch: "
                f"video {video_len} + action {action_len} + caption {text_len} + state 1 + timesteps 2 "
                f"= {expected}"
            )
        video, action, text, state, temb_v, temb_a = packed.split([video_len, action_len, text_len, 1, 1, 1])
        return cls(video, action, text, state, temb_v[0], temb_a[0], video_mask, action_mask, text_mask)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1.0 + scale.unsqueeze(0)) + shift.unsqueeze(0)


class AdaLN(nn.Module):
    """Timestep -> (shift, scale, gate) for the attention and FFN sub-blocks (adaLN-Zero)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden, 6 * hidden)
        # Zero init makes every block start as the identity (DiT's adaLN-Zero).
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.proj(nn.functional.silu(temb)).chunk(6, dim=-1)


def _attend(module: nn.Module, x: torch.Tensor, mask: torch.Tensor, kv: torch.Tensor | None = None):
    out, bias = module(x, attention_mask=mask, key_value_states=kv) if kv is not None else module(
        x, attention_mask=mask
    )
    return out if bias is None else out + bias


def _ffn(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out, bias = module(x)
    return out if bias is None else out + bias


class TextLayer(nn.Module):
    """A pre-norm transformer layer of the caption encoder."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        recompute_core: bool = False,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__()
        h = config.hidden_size
        self.norm_attn, self.norm_ffn = nn.LayerNorm(h), nn.LayerNorm(h)
        self.attn = self_attention(config, layer_number, recompute_core, pg_collection)
        self.ffn = gated_mlp(config, pg_collection)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        x = x + _attend(self.attn, self.norm_attn(x), key_mask)
        return x + _ffn(self.ffn, self.norm_ffn(x))


class VideoBlock(nn.Module):
    """AdaLN self-attention over video tokens, cross-attention to the caption, gated FFN."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        recompute_core: bool = False,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__()
        h = config.hidden_size
        self.adaln = AdaLN(h)
        self.norm_self = nn.LayerNorm(h, elementwise_affine=False)
        self.self_attn = self_attention(config, layer_number, recompute_core, pg_collection, split_sequence=True)
        self.norm_text = nn.LayerNorm(h)
        self.text_attn = cross_attention(config, layer_number, recompute_core, pg_collection)
        self.norm_ffn = nn.LayerNorm(h, elementwise_affine=False)
        self.ffn = gated_mlp(config, pg_collection)

    def forward(self, s: Streams) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(s.temb_video)
        x = s.video
        x = x + gate1 * _attend(self.self_attn, _modulate(self.norm_self(x), shift1, scale1), s.video_mask)
        x = x + _attend(self.text_attn, self.norm_text(x), s.text_mask, kv=s.text)
        return x + gate2 * _ffn(self.ffn, _modulate(self.norm_ffn(x), shift2, scale2))


class ActionBlock(nn.Module):
    """Self-attention over actions, cross-attention to the state token, to the matching video
    block's output (the coupling), and to the caption; then a gated FFN. AdaLN on timestep."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        recompute_core: bool = False,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__()
        h = config.hidden_size
        self.adaln = AdaLN(h)
        self.norm_self = nn.LayerNorm(h, elementwise_affine=False)
        self.self_attn = self_attention(config, layer_number, recompute_core, pg_collection, split_sequence=True)
        self.norm_state = nn.LayerNorm(h)
        self.state_attn = cross_attention(config, layer_number, recompute_core, pg_collection)
        self.norm_video = nn.LayerNorm(h)
        self.video_attn = cross_attention(config, layer_number, recompute_core, pg_collection, split_sequence=True)
        self.norm_text = nn.LayerNorm(h)
        self.text_attn = cross_attention(config, layer_number, recompute_core, pg_collection)
        self.norm_ffn = nn.LayerNorm(h, elementwise_affine=False)
        self.ffn = gated_mlp(config, pg_collection)

    def forward(self, s: Streams, video_hidden: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(s.temb_action)
        a = s.action
        a = a + gate1 * _attend(self.self_attn, _modulate(self.norm_self(a), shift1, scale1), s.action_mask)
        no_mask = torch.zeros_like(s.text_mask[..., :1])  # the state token is always present
        a = a + _attend(self.state_attn, self.norm_state(a), no_mask, kv=s.state)
        a = a + _attend(self.video_attn, self.norm_video(a), s.video_mask, kv=video_hidden)
        a = a + _attend(self.text_attn, self.norm_text(a), s.text_mask, kv=s.text)
        return a + gate2 * _ffn(self.ffn, _modulate(self.norm_ffn(a), shift2, scale2))


class CoupledLayer(nn.Module):
    """Video block i and action block i: the unit a pipeline rank holds."""

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        recompute_core: bool = False,
        pg_collection: ProcessGroupCollection | None = None,
    ) -> None:
        super().__init__()
        self.video = VideoBlock(config, layer_number, recompute_core, pg_collection)
        self.action = ActionBlock(config, layer_number, recompute_core, pg_collection)

    def forward(self, s: Streams) -> Streams:
        video = self.video(s)
        # Actions read this layer's video output; gradients flow back into the video tower
        # (one-way: the video block never reads the action stream).
        action = self.action(s, video)
        return s.with_towers(video, action)


class FinalLayer(nn.Module):
    """AdaLN-modulated norm and a linear head back to the tower's data space."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.modulation = nn.Linear(hidden, 2 * hidden)
        self.head = nn.Linear(hidden, out_dim)
        for p in self.head.parameters():
            p.use_adamw = True
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.modulation(nn.functional.silu(temb)).chunk(2, dim=-1)
        return self.head(_modulate(self.norm(x), shift, scale))
