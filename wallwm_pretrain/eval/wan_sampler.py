"""Sampling a plan with both towers of a Wan-tower model (``model.video_tower=wan``).

The video tower steps as Wan's own pipeline does (``eval/wan_video.py``): a diffusers
flow-matching scheduler (Euler or UniPC) with the shift the tower trains with
(``model.video_time_shift``), per-token timesteps 0 on the clean latent frames (the M history
frames and the anchor) and the scheduler's timestep on the others, the clean frames put back after
every step. The action tower integrates its own flow with Euler steps at the flow times paired
with the video's as in the small towers' sampler (``eval/sampler.py``): video time ``shift(u)``
with action time ``u``, here ``u`` read back from the scheduler's sigmas through the inverse shift,
so both reach t = 0 at the last step. The text context is Wan's (zero-padded to
``model.text_len``, no mask in the Wan tower: ``model/wan/text.py``). The remaining-time head reads
the clean anchor, the state token and the text context once (none of them is noised).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from wallwm_pretrain.eval.wan_video import make_scheduler
from wallwm_pretrain.model.wan.text import pad_text_context
from wallwm_pretrain.model.wan_wallwm import WanFlowInputs, WanWallWM


@dataclass
class WanSample:
    actions: torch.Tensor  # [B, T, A] normalised
    latents: torch.Tensor  # [B, V, Z, N, h, w]: the anchor and the predicted latent frames
    remaining: torch.Tensor  # [B] control steps to the end of the event in progress


def unshift(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """Inverse of the schedule shift ``s u / (1 + (s - 1) u)``."""
    return sigma / (shift - (shift - 1) * sigma)


@torch.no_grad()
def sample_wan(model: WanWallWM, clean: torch.Tensor, state: torch.Tensor, text: torch.Tensor,
               text_valid: torch.Tensor | None, steps: int, denoise_steps: int,
               noise: tuple[torch.Tensor, torch.Tensor], *, scheduler: str = "euler") -> WanSample:
    """Denoise ``steps`` control steps of actions and their latent frames.

    Args:
        model: the whole Wan-tower model (eval mode).
        clean: ``[B, V, Z, M + 1, h, w]`` normalised VAE latents: M history frames, then the anchor.
        state: ``[B, S]`` normalised proprioception.
        text: ``[B, L, text_dim]`` text-encoder states (or aligned states) with ``text_valid`` ``[B, L]``.
        steps: control steps T, a multiple of ``model.frame_stride`` (K_p): T / K_p latent frames
            from the anchor on.
        denoise_steps: the scheduler's steps.
        noise: ``([B, V, Z, T / K_p - 1, h, w], [B, T, A])``: the starting noise of the predicted
            latent frames and of the actions.
        scheduler: ``euler`` or ``unipc`` (:func:`~wallwm_pretrain.eval.wan_video.make_scheduler`).
    """
    k, m = model.frame_stride, clean.shape[3] - 1
    if steps % k or steps < k:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the frame stride ({k})")
    if denoise_steps < 1:
        raise ValueError(f"denoise_steps must be >= 1, got {denoise_steps}")
    b, v, z, _, h, w = clean.shape
    n = steps // k
    video_noise, actions = (x.to(clean.device).float().clone() for x in noise)
    want = ((b, v, z, n - 1, h, w), (b, steps, int(model.cfg.action_dim)))
    if (tuple(video_noise.shape), tuple(actions.shape)) != want:
        raise ValueError(f"noise shapes {tuple(video_noise.shape)}, {tuple(actions.shape)}; expected {want[0]}, {want[1]}")
    clean = clean.float()
    video = torch.cat([clean, video_noise], dim=3)  # [B, V, Z, M + N, h, w]
    text, text_valid = pad_text_context(text.float(), text_valid, int(model.cfg.text_len))
    dev = clean.device
    pt, ph, pw = model.wan.patch_size
    per_frame = torch.ones((m + n) // pt, device=dev)
    per_frame[: m + 1] = 0  # history and anchor: timestep 0
    clean_tokens = per_frame.repeat_interleave((h // ph) * (w // pw))[None].expand(b, -1)
    anchor = clean[:, :, :, m].permute(0, 1, 3, 4, 2).reshape(b, v * h * w, z)
    ones = lambda *shape: torch.ones(shape, dtype=torch.bool, device=dev)  # noqa: E731

    def inputs(t_video: torch.Tensor, u: torch.Tensor) -> WanFlowInputs:
        return WanFlowInputs(
            xt_video=video, timestep=clean_tokens * t_video.float(), xt_action=actions, target_video=video,
            target_action=actions, t_action=u.float().expand(b), state=state.float(), text_states=text,
            text_valid=text_valid, frame_valid=ones(b, m + n), action_valid=ones(b, steps),
            video_loss_mask=~ones(b, m + n), anchor_frame=anchor, remaining=None, history=m)

    shift = float(model.cfg.video_time_shift)
    sched = make_scheduler(scheduler, shift)
    sched.set_timesteps(denoise_steps, device=dev)
    sigmas = sched.sigmas.to(dev).float()
    for i, t in enumerate(sched.timesteps):
        v_video, v_action = model.denoise(inputs(t, unshift(sigmas[i], shift)))
        video = sched.step(v_video, t, video, return_dict=False)[0]
        video[:, :, :, : m + 1] = clean
        actions = actions + (unshift(sigmas[i + 1], shift) - unshift(sigmas[i], shift)) * v_action
    # the remaining-time head: the clean anchor, the state token and the caption (nothing noised)
    final = inputs(torch.zeros((), device=dev), torch.zeros((), device=dev))
    s = model.embed_action(final, model.geometry(final))
    frames_left = model.time_head(anchor, s.state, s.text, text_valid)
    return WanSample(actions, video[:, :, :, m:], frames_left.float() * k)
