"""Variable-length samples -> one padded :class:`~wallwm_pretrain.batch.Batch` with lengths.

Padding goes to the batch's longest sample, rounded up to a multiple of ``frame_stride`` so
that action groups and latent frames line up; padded steps are zero and masked out of every
attention and loss by ``lengths``. Latents (when every sample has them) are padded to that
length's latent frames and laid out per view, ``[B, V, Z, N, h, w]`` (the shards store
``[N, V, Z, h, w]`` per sample); caption states are padded to the batch's longest, with
``text_valid`` marking their real rows.
"""

from __future__ import annotations

import numpy as np
import torch

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.data.cookers import TrainSample


def collate(samples: list[TrainSample], frame_stride: int) -> Batch:
    b = len(samples)
    t = max(s.length for s in samples)
    t = -(-t // frame_stride) * frame_stride
    first = samples[0]
    frames = np.zeros((b, t, *first.frames.shape[1:]), np.uint8)
    actions = np.zeros((b, t, first.actions.shape[1]), np.float32)
    cap_len = max(len(s.caption) for s in samples)
    caption = np.zeros((b, cap_len), np.int64)
    for i, s in enumerate(samples):
        frames[i, : s.length] = s.frames
        actions[i, : s.length] = s.actions
        caption[i, : len(s.caption)] = s.caption
    latents = text_states = text_valid = None
    if all(s.latents is not None for s in samples):
        stacked = np.zeros((b, t // frame_stride, *first.latents.shape[1:]), np.float16)
        for i, s in enumerate(samples):
            stacked[i, : len(s.latents)] = s.latents
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
    )
