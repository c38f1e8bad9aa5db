"""FLOPs of the frozen Wan VAE's encoder, and what they mean for latent extraction.

Before stage 1 every training clip is pushed through the frozen VAE once
(``data_tools encode-latents``). How many hours of robot video one GPU can encode per day follows
from the encoder's FLOPs per clip, which :func:`vae_encode_flops` counts by running diffusers' own
``AutoencoderKLWan.encode`` on meta tensors (shapes only, no memory) under
``torch.utils.flop_counter``, as the planner counts the denoiser: the causal 3-D convolutions,
the temporal chunking (the first frame alone, then 4 frames at a time) and the residual paths of
the Wan2.2 VAE are the library's, not a hand-written formula.
"""

from __future__ import annotations

# The Wan2.2 TI2V-5B VAE, from the vae/config.json of Wan-AI/Wan2.2-TI2V-5B-Diffusers (the
# architecture keys only; the latent statistics do not change the FLOPs).
WAN22_VAE = {
    "attn_scales": [], "base_dim": 160, "decoder_base_dim": 256, "dim_mult": [1, 2, 4, 4], "dropout": 0.0,
    "in_channels": 12, "is_residual": True, "num_res_blocks": 2, "out_channels": 12, "patch_size": 2,
    "scale_factor_spatial": 16, "scale_factor_temporal": 4, "temperal_downsample": [False, True, True], "z_dim": 48,
}


def vae_encode_flops(config: dict, frames: int, height: int, width: int, device: str = "meta") -> int:
    """FLOPs (multiply-add = 2) of encoding one ``frames x height x width`` RGB clip with an
    ``AutoencoderKLWan`` of ``config`` (architecture keys of a diffusers ``vae/config.json``).
    ``device="meta"`` counts without memory or weights; another device runs the real encoder."""
    import torch
    from diffusers import AutoencoderKLWan
    from torch.utils.flop_counter import FlopCounterMode

    if frames < 1 or (frames - 1) % int(config.get("scale_factor_temporal", 4)):
        raise ValueError(f"the Wan VAE encodes 1 + 4k frames, got {frames}")
    with torch.device(device):
        vae = AutoencoderKLWan(**config).eval()
    clip = torch.zeros(1, 3, frames, height, width, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        vae.encode(clip)
    return int(counter.get_total_flops())


def video_hours_per_gpu_day(flops_per_clip: float, clip_seconds: float, peak_tflops: float,
                            utilisation: float) -> float:
    """Hours of video one GPU encodes in 24 h at ``utilisation`` of ``peak_tflops``."""
    clips_per_day = 86_400 * peak_tflops * 1e12 * utilisation / flops_per_clip
    return clips_per_day * clip_seconds / 3600
