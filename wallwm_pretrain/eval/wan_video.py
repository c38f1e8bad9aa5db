"""The Wan video tower's own video from a first frame: Wan2.2 TI2V sampling, action tower aside.

The video tower never reads the action tower (the coupling is one-way), so the video a Wan-tower
model predicts is the :class:`~wallwm_pretrain.model.wan.WanTower`'s alone. This sampler is the
project's form of diffusers' ``WanImageToVideoPipeline`` with ``expand_timesteps=True`` (the
Wan2.2 TI2V-5B setting), step for step:

1. the first frame through the frozen VAE (posterior mean, normalised): the condition latent;
2. noise ``[B, Z, F, h, w]`` from the generator (one draw, as the pipeline's ``randn_tensor``);
3. at each of the scheduler's timesteps ``t``: the tower's input is the noise latents with latent
   frame 0 replaced by the condition, its per-token timesteps are 0 on frame 0 and ``t``
   elsewhere, the text context is Wan's (the text encoder's states zero-padded to ``text_len``, no
   mask); with ``guidance > 1`` a second pass on the negative prompt's states and
   ``uncond + guidance (cond - uncond)``; then the scheduler's step;
4. frame 0 replaced by the condition once more, and the VAE decodes.

The schedule is diffusers' own scheduler object (:func:`make_scheduler`: flow-matching Euler, or
the UniPC multistep solver Wan's released pipelines use, both with Wan's shift) rather than a
hand-written one: the sigma grid (the shift applied to ``linspace(1, shift(1/1000))``), the last
step to sigma 0 and UniPC's multistep corrections are theirs. What differs from Wan's pipeline is
listed in docs/unified.md ("The same video as Wan's pipeline").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wallwm_pretrain.model.wan.frozen import FrozenWan
from wallwm_pretrain.model.wan.tower import WanTower

SCHEDULERS = ("euler", "unipc")


def make_scheduler(name: str = "euler", shift: float = 5.0):
    """A fresh diffusers flow-matching scheduler with Wan's timestep scale (1000) and ``shift``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    if name == "unipc":
        return UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                       use_flow_sigmas=True, flow_shift=shift)
    raise ValueError(f"unknown scheduler {name!r}; the schedulers are {', '.join(SCHEDULERS)}")


@dataclass
class WanVideo:
    latents: torch.Tensor  # [B, Z, F, h, w] (or [B, V, Z, F, h, w]) normalised, latent frame 0 the condition
    frames: torch.Tensor | None  # uint8 [B, T, H, W, 3] (or [B, V, T, H, W, 3]) decoded (None when not asked)


def first_frame_timesteps(t: torch.Tensor, grid: tuple[int, int, int], batch: int) -> torch.Tensor:
    """``[B, S]``: 0 on the first patch frame's tokens, ``t`` on the others (Wan2.2 TI2V)."""
    f, h, w = grid
    per_frame = torch.ones(f, dtype=torch.float32, device=t.device)
    per_frame[0] = 0
    return (per_frame.repeat_interleave(h * w) * t.float())[None].expand(batch, -1)


@torch.no_grad()
def sample_video(tower: WanTower, frozen: FrozenWan, first_frame: torch.Tensor, text: torch.Tensor,
                 num_frames: int, steps: int, generator: torch.Generator, *, scheduler=None,
                 negative: torch.Tensor | None = None, guidance: float = 1.0, decode: bool = True) -> WanVideo:
    """A video of ``num_frames`` frames that starts at ``first_frame``.

    Args:
        tower: the Wan video tower (one view, or the model's ``video``).
        frozen: the frozen VAE (encodes the first frame, decodes the video).
        first_frame: uint8 ``[B, H, W, 3]``, or ``[B, V, H, W, 3]`` for a tower of V views (each view
            encoded and decoded on its own, denoised together; latents ``[B, V, Z, F, h, w]``).
        text: ``[B, text_len, text_dim]`` Wan's text context (``model/wan/text.py``).
        num_frames: frames of the video, ``1 + r k`` for the VAE's temporal compression r.
        steps: the scheduler's inference steps.
        generator: the noise's random stream.
        scheduler: a diffusers scheduler (default: :func:`make_scheduler` ``("euler", 5.0)``).
        negative: the negative prompt's context, for ``guidance > 1`` (default: none).
        guidance: classifier-free guidance scale; 1 = no second pass.
        decode: decode the latents to frames with the VAE.
    """
    r, s = frozen.temporal, frozen.spatial
    if num_frames < 1 or (num_frames - 1) % r:
        raise ValueError(f"num_frames={num_frames}: the VAE needs 1 + {r} k frames")
    if first_frame.dim() not in (4, 5):
        raise ValueError(f"first frame of shape {tuple(first_frame.shape)}: expected [B, H, W, 3] or [B, V, H, W, 3]")
    views = first_frame.shape[1] if first_frame.dim() == 5 else None
    b, height, width = first_frame.shape[0], first_frame.shape[-3], first_frame.shape[-2]
    if height % s or width % s:
        raise ValueError(f"first frame of {height}x{width} is not divisible by the VAE's spatial compression {s}")
    if guidance > 1 and negative is None:
        raise ValueError("guidance > 1 needs the negative prompt's text context (negative=)")
    scheduler = scheduler or make_scheduler()
    dev = next(tower.parameters()).device
    condition = frozen.encode_frames(first_frame.reshape(-1, 1, height, width, 3)).to(dev)  # [B V, Z, 1, h, w]
    z, h, w = condition.shape[1], height // s, width // s
    f = (num_frames - 1) // r + 1
    lead = (b,) if views is None else (b, views)
    condition = condition.reshape(*lead, z, 1, h, w)
    latents = torch.randn((*lead, z, f, h, w), generator=generator, dtype=torch.float32,
                          device=generator.device).to(dev)
    mask = torch.ones(*(1,) * len(lead), 1, f, h, w, device=dev)
    mask[..., 0, :, :] = 0
    pt, ph, pw = tower.cfg.patch_size
    grid = (f // pt, h // ph, w // pw)
    scheduler.set_timesteps(steps, device=dev)
    text = text.to(dev).float()
    for t in scheduler.timesteps:
        x = (1 - mask) * condition + mask * latents
        timestep = first_frame_timesteps(t, grid, b)
        velocity = tower(x, timestep, text)
        if guidance > 1:
            uncond = tower(x, timestep, negative.to(dev).float())
            velocity = uncond + guidance * (velocity - uncond)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    latents = (1 - mask) * condition + mask * latents
    frames = None
    if decode:  # [B, T, H, W, 3] (or [B, V, T, H, W, 3])
        frames = frozen.to_uint8(frozen.decode(latents.reshape(-1, z, f, h, w)))
        frames = frames.reshape(*lead, *frames.shape[1:])
    return WanVideo(latents, frames)
