"""Analytical matmul FLOPs of the dual-tower model, for model FLOPs utilisation (MFU).

Counted per sample of one forward, 2 FLOPs per multiply-add, over the padded shapes the step
computes (h hidden, f FFN width, Sv = F * P video tokens, history frames included, Sa = T action
tokens, L caption tokens, D = patch_size^2 * 3 values per patch, A action and S state dims):

    self-attention(s)       = 8 s h^2 + 4 s^2 h                (QKV, proj; scores, weighted sum)
    cross-attention(q, k)   = 4 q h^2 + 4 k h^2 + 4 q k h      (Q, proj; KV; scores, weighted sum)
    gated FFN(s)            = 6 s h f                          (fc1 to 2f, fc2 back)
    AdaLN                   = 12 h^2                           (one [h -> 6h] per block)

    video block   = AdaLN + self(Sv) + cross(Sv, L) + FFN(Sv)
    action block  = AdaLN + self(Sa) + cross(Sa, 1) [state token] + cross(Sa, Sv) [coupling]
                    + cross(Sa, L) + FFN(Sa)
    caption layer = self(L) + FFN(L)
    input side    = 2 Sv D h + 2 Sa A h + 2 S h + 8 h^2        (patch, action, state, 2 timestep MLPs)
    output side   = 2 Sv h D + 2 Sa h A + 8 h^2                (heads, 2 AdaLN modulations)

    forward = num_layers * (video block + action block) + text_layers * caption layer
              + input side + output side

Training FLOPs are 3x the forward (backward computes gradients of inputs and of weights, each
as costly as the forward). MFU counts only these *model* FLOPs: the extra forward that
activation recomputation runs is hardware work, not model work (it appears in
:func:`recompute_flops` for hardware utilisation). Elementwise work (norms, softmax, AdaLN
modulation) is left out, as is customary; on the smoke model it is a few percent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from wallwm_pretrain.config import ModelConfig

_aten = torch.ops.aten
# torch's counter knows the GPU attention kernels but not the CPU flash kernel that the fused
# attention core runs on a CPU (and on meta tensors in the memory plan): count it with torch's
# own SDPA formulas (two matmuls forward; the score recomputation and four matmuls backward)
CPU_FLASH_FLOPS = {
    _aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *_, out_shape=None, **__: sdpa_flop_count(q, k, v),
    _aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda dout, q, k, v, *_, out_shape=None, **__: sdpa_backward_flop_count(dout, q, k, v),
}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, taught the CPU flash-attention kernel."""
    return FlopCounterMode(display=False, custom_mapping=CPU_FLASH_FLOPS)


def self_attention_flops(s: int, h: int) -> int:
    return 8 * s * h * h + 4 * s * s * h


def cross_attention_flops(q: int, k: int, h: int) -> int:
    return 4 * q * h * h + 4 * k * h * h + 4 * q * k * h


def ffn_flops(s: int, h: int, f: int) -> int:
    return 6 * s * h * f


@dataclass(frozen=True)
class SampleShape:
    """Padded sizes of one sample as the towers see it."""

    video_tokens: int  # F * P
    action_tokens: int  # T
    caption_tokens: int  # L

    @classmethod
    def of(cls, cfg: ModelConfig, steps: int, frame_stride: int, caption_tokens: int, history: int = 0) -> "SampleShape":
        """``history``: M clean latent frames before the anchor (unified mode); they are video
        tokens like the others (the towers run on them), so F = M + ceil(T / K)."""
        frames = history + -(-steps // frame_stride)
        patches = cfg.num_views * (cfg.image_size // cfg.patch_size) ** 2
        return cls(frames * patches, steps, caption_tokens)


def attention_core_flops(cfg: ModelConfig, shape: SampleShape) -> int:
    """Scores and weighted sums of every attention core (what ``recompute=selective`` repeats)."""
    h, sv, sa, lt = cfg.hidden_size, shape.video_tokens, shape.action_tokens, shape.caption_tokens
    per_layer = 4 * h * (sv * sv + sv * lt + sa * sa + sa * 1 + sa * sv + sa * lt)
    return cfg.num_layers * per_layer + cfg.text_layers * 4 * h * lt * lt


def forward_flops(cfg: ModelConfig, shape: SampleShape) -> dict[str, int]:
    """Forward matmul FLOPs of one sample, by part (``total`` is their sum)."""
    h, f = cfg.hidden_size, cfg.ffn_hidden_size
    sv, sa, lt = shape.video_tokens, shape.action_tokens, shape.caption_tokens
    d = cfg.patch_size**2 * 3
    adaln = 12 * h * h
    video = adaln + self_attention_flops(sv, h) + cross_attention_flops(sv, lt, h) + ffn_flops(sv, h, f)
    action = (
        adaln + self_attention_flops(sa, h) + cross_attention_flops(sa, 1, h) + cross_attention_flops(sa, sv, h)
        + cross_attention_flops(sa, lt, h) + ffn_flops(sa, h, f)
    )
    parts = {
        "video_tower": cfg.num_layers * video,
        "action_tower": cfg.num_layers * action,
        "caption_encoder": cfg.text_layers * (self_attention_flops(lt, h) + ffn_flops(lt, h, f)),
        "input_side": 2 * sv * d * h + 2 * sa * cfg.action_dim * h + 2 * cfg.state_dim * h + 8 * h * h,
        "output_side": 2 * sv * h * d + 2 * sa * h * cfg.action_dim + 8 * h * h,
    }
    parts["total"] = sum(parts.values())
    return parts


def train_flops(cfg: ModelConfig, shape: SampleShape) -> int:
    """Model FLOPs of one sample's training step (forward + backward = 3x forward)."""
    return 3 * forward_flops(cfg, shape)["total"]


def recompute_flops(cfg: ModelConfig, shape: SampleShape) -> int:
    """Extra forward FLOPs per sample that ``cfg.recompute`` runs in backward."""
    if cfg.recompute == "full":
        parts = forward_flops(cfg, shape)
        return parts["video_tower"] + parts["action_tower"]
    if cfg.recompute == "selective":
        return attention_core_flops(cfg, shape)
    return 0


def mfu(model_flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved model FLOPs over the hardware's peak."""
    return model_flops_per_s / peak_flops_per_s
