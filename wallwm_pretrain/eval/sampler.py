"""Sampling an event from the current observation by integrating the learned flow.

Training teaches the velocity ``noise - x0`` at ``x_t = (1 - t) x0 + t noise``, so a sample is
the solution of ``dx/dt = v(x, t)`` from pure noise at t = 1 back to t = 0. Video and actions
are integrated together with one shared time (the action tower reads the video tower at every
layer), with Euler steps on a uniform grid (the video tower's times mapped through its trained
schedule, ``model.video_time_shift``; the identity by default); the first latent frame is the
current observation and stays clean throughout, exactly as during training. In unified mode
(``history_frames``) the M history frames come first and stay clean too, the anchor (the current
observation) is latent frame M, and the text stream may be a context source's (``text``).
"""

from __future__ import annotations

import torch

from wallwm_pretrain.model import WallWM
from wallwm_pretrain.model.embeddings import patchify
from wallwm_pretrain.model.flow_matching import shift_time


@torch.no_grad()
def sample_event(
    model: WallWM,
    first_frame: torch.Tensor,
    state: torch.Tensor,
    caption: torch.Tensor,
    steps: int,
    denoise_steps: int = 10,
    generator: torch.Generator | None = None,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    *,
    history_frames: torch.Tensor | None = None,
    text: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Denoise ``steps`` control steps of actions (and the matching video latents).

    Args:
        model: the whole model (eval mode).
        first_frame: uint8 [B, V, H, W, 3], the current observation.
        state: float [B, S] (normalised); caption: long [B, L] byte tokens.
        steps: control steps to denoise, a multiple of ``model.frame_stride``.
        denoise_steps: Euler steps from t = 1 to t = 0.
        noise: optional starting noise (video [B, F, P, D], actions [B, steps, A]) in place of
            draws from ``generator``: a batch of requests that each bring their own noise gets
            the samples each would get alone (the policy server batches that way).
        history_frames: unified mode: uint8 [B, M, V, H, W, 3], the frames K_p, 2 K_p, ... M K_p
            control steps before the observation, oldest first (clean, before the anchor).
        text: the text stream and mask (``model.text_context``) in place of ``caption``'s.

    Returns:
        (actions [B, steps, A] normalised, video latents [B, F, P, D] in [-1, 1] scale).
    """
    k = model.frame_stride
    if steps % k or steps < k:
        raise ValueError(f"steps ({steps}) must be a positive multiple of the frame stride ({k})")
    if denoise_steps < 1:
        raise ValueError(f"denoise_steps must be >= 1, got {denoise_steps}")
    b, dev = first_frame.shape[0], first_frame.device
    clean_frames = first_frame[:, None] if history_frames is None else torch.cat([history_frames, first_frame[:, None]], 1)
    m = clean_frames.shape[1] - 1
    first = patchify(clean_frames, model.cfg.patch_size)  # [B, M + 1, P, D]: history, anchor
    frames = steps // k
    if noise is None:
        video = torch.randn((b, frames, *first.shape[2:]), device=dev, generator=generator)
        actions = torch.randn((b, steps, model.cfg.action_dim), device=dev, generator=generator)
    else:
        video, actions = (n.to(dev).clone() for n in noise)
        want = ((b, frames, *first.shape[2:]), (b, steps, model.cfg.action_dim))
        if (tuple(video.shape), tuple(actions.shape)) != want:
            raise ValueError(f"noise shapes {tuple(video.shape)}, {tuple(actions.shape)}; expected {want[0]}, {want[1]}")
    if m:  # the history frames lead the window; the noise covers the anchor and the future
        video = torch.cat([first[:, :m], video], dim=1)
        frames += m
    video[:, m:m + 1] = first[:, m:]
    frame_valid = torch.ones((b, frames), dtype=torch.bool, device=dev)
    action_valid = torch.ones((b, steps), dtype=torch.bool, device=dev)
    grid = torch.linspace(1.0, 0.0, denoise_steps + 1, device=dev)
    # the video tower steps through the times its schedule trained on (model.video_time_shift)
    grid_v = shift_time(grid, model.cfg.video_time_shift)
    # unified mode's window and context only when used: event mode calls denoise as it always has
    extra = {**({"history": m} if m else {}), **({"text": text} if text is not None else {})}
    for t, t_next, tv, tv_next in zip(grid[:-1], grid[1:], grid_v[:-1], grid_v[1:]):
        v_video, v_action = model.denoise(
            video, actions, tv.expand(b), t.expand(b), state, caption, frame_valid, action_valid, **extra,
        )
        video = video + (tv_next - tv) * v_video  # negative steps: towards the data
        video[:, :m + 1] = first
        actions = actions + (t_next - t) * v_action
    return actions, video[:, m:]
