"""Variable-length samples -> one padded :class:`~wallwm_pretrain.batch.Batch` with lengths.

Padding goes to the batch's longest sample, rounded up to a multiple of ``frame_stride`` so
that action groups and latent frames line up; padded steps are zero and masked out of every
attention and loss by ``lengths``. Latents (when every sample has them) are padded to that
length's latent frames and laid out per view, ``[B, V, Z, N, h, w]`` (the shards store
``[N, V, Z, h, w]`` per sample); caption states are padded to the batch's longest, with
``text_valid`` marking their real rows.

Unified-mode samples (``history_frames`` set) put their history first: frames
``[B, M K + T, ...]`` (the M K history steps, then the T padded steps ``actions`` covers),
latents ``[B, V, Z, M + T / K, h, w]``, ``Batch.history = M``, and the per-row ``context``,
``task`` and ``done`` lists filled. Every row has the same M (the cooker clamps at the episode
start instead of shortening the history).
"""

from __future__ import annotations

import numpy as np
import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.data.cookers import TrainSample


def _history(samples: list[TrainSample], frame_stride: int) -> int:
    """M of a batch: 0 without history; ValueError when rows differ or M K is not whole."""
    if samples[0].history_frames is None:
        if any(s.history_frames is not None for s in samples):
            raise ValueError("collate: some samples carry history frames and some do not")
        return 0
    steps = {len(s.history_frames) for s in samples if s.history_frames is not None}
    if len(steps) != 1 or any(s.history_frames is None for s in samples):
        raise ValueError(f"collate: rows carry different history lengths {sorted(steps)}; unified-mode "
                         "windows all have data.history_latents latent frames")
    (n,) = steps
    if n % frame_stride:
        raise ValueError(f"collate: {n} history steps are not whole latent frames of {frame_stride} steps")
    m = n // frame_stride
    if any(s.latents is not None and (s.history_latents is None or len(s.history_latents) != m) for s in samples):
        raise ValueError(f"collate: every row with latents needs {m} history latent frames")
    return m


def collate(samples: list[TrainSample], frame_stride: int) -> Batch:
    b = len(samples)
    t = max(s.length for s in samples)
    t = -(-t // frame_stride) * frame_stride
    first = samples[0]
    m = _history(samples, frame_stride)
    h = m * frame_stride  # history control steps, before the T steps
    frames = np.zeros((b, h + t, *first.frames.shape[1:]), np.uint8)
    actions = np.zeros((b, t, first.actions.shape[1]), np.float32)
    cap_len = max(len(s.caption) for s in samples)
    caption = np.zeros((b, cap_len), np.int64)
    for i, s in enumerate(samples):
        if h:
            frames[i, :h] = s.history_frames
        frames[i, h : h + s.length] = s.frames
        actions[i, : s.length] = s.actions
        caption[i, : len(s.caption)] = s.caption
    latents = text_states = text_valid = None
    if all(s.latents is not None for s in samples):
        stacked = np.zeros((b, m + t // frame_stride, *first.latents.shape[1:]), np.float16)
        for i, s in enumerate(samples):
            if m:
                stacked[i, :m] = s.history_latents
            stacked[i, m : m + len(s.latents)] = s.latents
        latents = torch.from_numpy(stacked).permute(0, 2, 3, 1, 4, 5).contiguous()  # [B, V, Z, N, h, w]
    if all(s.caption_states is not None for s in samples):
        longest = max(len(s.caption_states) for s in samples)
        states = np.zeros((b, longest, first.caption_states.shape[1]), np.float16)
        for i, s in enumerate(samples):
            states[i, : len(s.caption_states)] = s.caption_states
        text_states = torch.from_numpy(states)
        text_valid = torch.arange(longest)[None, :] < torch.tensor([len(s.caption_states) for s in samples])[:, None]
    return Batch(
        frames=torch.from_numpy(frames),
        actions=torch.from_numpy(actions),
        state=torch.from_numpy(np.stack([s.state for s in samples]).astype(np.float32)),
        lengths=torch.tensor([s.length for s in samples], dtype=torch.int64),
        caption=torch.from_numpy(caption),
        keys=[s.key for s in samples],
        remaining=torch.tensor([s.remaining for s in samples], dtype=torch.float32),
        latents=latents,
        text_states=text_states,
        text_valid=text_valid,
        history=m,
        context=[s.context for s in samples] if first.history_frames is not None else [],
        task=[s.task for s in samples] if first.history_frames is not None else [],
        done=[list(s.done) for s in samples] if first.history_frames is not None else [],
    )
