"""One Wan block, with the grafted cross-view attention for multi-view video.

A block (diffusers' ``WanTransformerBlock``), hidden states ``[s, rows, hidden]`` with one row
per (sample, view), the six modulation vectors from the flow time ``e = table + temb``:

    h <- h + gate * SelfAttn(LN(h) * (1 + scale) + shift)            (RoPE, q/k RMS norm)
    h <- h + g * W_view * CrossViewAttn(LN(h) * (1 + scale) + shift + camera[view])
    h <- h + CrossAttn(LN_affine(h), text)                             (LN_affine: cross_attn_norm)
    h <- h + c_gate * FFN(LN(h) * (1 + c_scale) + c_shift)             (GELU, tanh approximation)

LayerNorms are float32 without affine weights (eps from the config); the residual adds are done
in float32 and cast back, as in diffusers. The cross-view step exists only with ``num_views >
1``: each token attends to the tokens of all views at the same latent frame; ``g`` is the
block's self-attention gate, ``W_view`` the cross-view attention's output projection, zero at
initialisation (weight and bias), and the camera embedding (one vector per view) starts at
zero, so a fresh graft leaves every view exactly on the pretrained single-view path.

Context parallelism (``split``, ``sequence_split.py``): ``h`` is this rank's piece of each
view's tokens and the modulation (per-token timesteps) its piece too; the self-attention and
the cross-view attention exchange heads for tokens in their core. The cross-view attention
groups the views of a latent frame only after the exchange, when every rank holds whole
sequences, so a piece need not end on a frame boundary.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from wallwm_pretrain.model.sequence_split import SequenceSplit
from wallwm_pretrain.model.wan.attention import WanAttention
from wallwm_pretrain.model.wan.config import WanConfig
from wallwm_pretrain.model.wan.layers import column_linear, row_linear, tp_size


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """LayerNorm over the last dim in float32, no affine weights (diffusers' FP32LayerNorm)."""
    return F.layer_norm(x.float(), x.shape[-1:], eps=eps)


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm with affine weights, computed in float32 whatever the input and weight dtypes
    (diffusers' ``FP32LayerNorm``); returns float32."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)


class WanMLP(nn.Module):
    """``linear_fc2(gelu_tanh(linear_fc1(x)))``, FFN width split over the tensor-parallel group."""

    def __init__(self, config: TransformerConfig, tp_group=None) -> None:
        super().__init__()
        if config.ffn_hidden_size % tp_size(tp_group):
            raise ValueError(f"ffn_dim={config.ffn_hidden_size} does not split over tp={tp_size(tp_group)}")
        self.linear_fc1 = column_linear(config.hidden_size, config.ffn_hidden_size, config, tp_group)
        self.linear_fc2 = row_linear(config.ffn_hidden_size, config.hidden_size, config, tp_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)[0], approximate="tanh"))[0]


def to_view_groups(h: torch.Tensor, views: int, frames: int) -> torch.Tensor:
    """``[F * P, B * V, d]`` -> ``[V * P, B * F, d]``: one sequence per (sample, latent frame)."""
    s, rows, d = h.shape
    p, b = s // frames, rows // views
    return h.view(frames, p, b, views, d).permute(3, 1, 2, 0, 4).reshape(views * p, b * frames, d)


def from_view_groups(h: torch.Tensor, views: int, frames: int) -> torch.Tensor:
    """Inverse of :func:`to_view_groups`."""
    s, rows, d = h.shape
    p, b = s // views, rows // frames
    return h.view(views, p, b, frames, d).permute(3, 1, 2, 0, 4).reshape(frames * p, b * views, d)


class CrossViewAttention(nn.Module):
    """Attention across the views of one latent frame, zero output projection, camera embedding.

    Tokens carry the spatial part of the 3-D RoPE (the frame part is the same for all tokens of
    a group and cancels in q.k); the camera embedding tells the views apart.
    """

    def __init__(self, config: TransformerConfig, cfg: WanConfig, tp_group=None,
                 split: SequenceSplit | None = None) -> None:
        super().__init__()
        self.views, self.split = cfg.num_views, split
        self.attention = WanAttention(config, cfg.eps, tp_group, split)
        with torch.no_grad():
            self.attention.linear_proj.weight.zero_()
            self.attention.linear_proj.bias.zero_()
        self.camera = nn.Parameter(torch.zeros(cfg.num_views, config.hidden_size))
        self.camera.use_adamw = True  # an embedding (rows looked up per view), not a linear map
        self.camera.no_weight_decay = True  # a learned offset per view: decay would pull it to zero

    def forward(self, x: torch.Tensor, frames: int, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``x`` ``[F * P, B * V, d]`` (rows ordered sample-major) -> same shape; ``rope`` of
        the whole grid (under a split too)."""
        v = self.views
        if self.split is not None:
            return self._split_forward(x, frames, rope)
        grouped = to_view_groups(x, v, frames)
        p = grouped.shape[0] // v
        grouped = grouped + self.camera.to(grouped.dtype).repeat_interleave(p, dim=0)[:, None, :]
        cos, sin = (t[:p].repeat(v, 1) for t in rope)  # first frame's angles: (h, w) only
        out = self.attention(grouped, rope=(cos, sin))
        return from_view_groups(out, v, frames)

    def _split_forward(self, x: torch.Tensor, frames: int, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """This rank's tokens ``[n / cp, B * V, d]`` of the ``n = F * P`` of each view."""
        v, sp, n = self.views, self.split, rope[0].shape[0]
        p = n // frames
        x = x + self.camera.to(x.dtype).repeat(x.shape[1] // v, 1)[None]  # row b * V + v: camera v
        cos, sin = (sp.shard(t[:p].repeat(frames, 1)) for t in rope)  # each token's (h, w) angles

        def to_groups(t: torch.Tensor) -> torch.Tensor:  # whole padded [n_pad, B V, h, d] -> [V P, B F, h, d]
            return to_view_groups(t[:n].flatten(2), v, frames).unflatten(-1, t.shape[2:])

        def from_groups(t: torch.Tensor) -> torch.Tensor:  # [V P, B F, h d] -> [n_pad, B V, h d]
            return sp.pad(from_view_groups(t, v, frames), 0)

        return self.attention(x, rope=(cos, sin), regroup=(to_groups, from_groups))


class WanBlock(nn.Module):
    """One Wan transformer block (see the module docstring).

    Args:
        config: megatron config (from :func:`wan_transformer_config`).
        cfg: the tower's shape.
        tp_group: tensor-parallel group (None: local layers).
    """

    def __init__(self, config: TransformerConfig, cfg: WanConfig, tp_group=None,
                 split: SequenceSplit | None = None) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.eps, self.split = cfg.eps, split
        self.self_attention = WanAttention(config, cfg.eps, tp_group, split)
        self.cross_view = CrossViewAttention(config, cfg, tp_group, split) if cfg.cross_view else None
        self.cross_attention_norm = FP32LayerNorm(d, eps=cfg.eps) if cfg.cross_attn_norm else None
        self.cross_attention = WanAttention(config, cfg.eps, tp_group)
        self.mlp = WanMLP(config, tp_group)
        # diffusers' scale_shift_table: shift, scale, gate (attention), shift, scale, gate (FFN)
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)
        self.modulation.no_weight_decay = True  # pretrained shift/scale/gate offsets, not weights

    def forward(self, h: torch.Tensor, text: torch.Tensor, modulation: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor], frames: int,
                video_mask: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One block.

        Args:
            h: ``[s, rows, d]`` video tokens (rows = samples x views).
            text: ``[L, rows, d]`` embedded text states.
            modulation: ``[t, rows, 6, d]`` flow-time projection (t = 1, or s for per-token times).
            rope: ``(cos, sin)`` ``[s, head_dim / 2]`` of the whole grid (under a split too).
            frames: latent frames (for cross-view grouping).
            video_mask, text_mask: key-padding masks ``[rows, 1, 1, s | L]`` (True = padding).
        """
        e = (self.modulation[None] + modulation.float()).unbind(dim=2)
        shift, scale, gate, c_shift, c_scale, c_gate = e
        dtype = h.dtype

        def modulated(x):
            return (layer_norm(x, self.eps) * (1 + scale) + shift).to(dtype)

        own = rope if self.split is None else tuple(self.split.shard(t) for t in rope)  # this rank's tokens'
        h = (h.float() + self.self_attention(modulated(h), rope=own, key_padding_mask=video_mask) * gate).to(dtype)
        if self.cross_view is not None:
            h = (h.float() + self.cross_view(modulated(h), frames, rope) * gate).to(dtype)
        normed = h if self.cross_attention_norm is None else self.cross_attention_norm(h).to(dtype)
        h = h + self.cross_attention(normed, context=text, key_padding_mask=text_mask)
        ffn_in = (layer_norm(h, self.eps) * (1 + c_scale) + c_shift).to(dtype)
        return (h.float() + self.mlp(ffn_in).float() * c_gate).to(dtype)
