"""Variable-length samples -> one padded :class:`~wallwm_pretrain.batch.Batch` with lengths.

Padding goes to the batch's longest sample, rounded up to a multiple of ``frame_stride`` so
that action groups and latent frames line up; padded steps are zero and masked out of every
attention and loss by ``lengths``. Latents (when every sample has them) are padded to that
length's latent frames, caption states to the batch's longest, with their own lengths.
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
    latents = caption_states = state_lengths = None
    if all(s.latents is not None for s in samples):
        latents = np.zeros((b, t // frame_stride, *first.latents.shape[1:]), np.float16)
        for i, s in enumerate(samples):
            latents[i, : len(s.latents)] = s.latents
        latents = torch.from_numpy(latents)
    if all(s.caption_states is not None for s in samples):
        longest = max(len(s.caption_states) for s in samples)
        states = np.zeros((b, longest, first.caption_states.shape[1]), np.float16)
        for i, s in enumerate(samples):
            states[i, : len(s.caption_states)] = s.caption_states
        caption_states = torch.from_numpy(states)
        state_lengths = torch.tensor([len(s.caption_states) for s in samples], dtype=torch.int64)
    return Batch(
        frames=torch.from_numpy(frames),
        actions=torch.from_numpy(actions),
        state=torch.from_numpy(np.stack([s.state for s in samples]).astype(np.float32)),
        lengths=torch.tensor([s.length for s in samples], dtype=torch.int64),
        caption=torch.from_numpy(caption),
        keys=[s.key for s in samples],
        remaining=torch.tensor([s.remaining for s in samples], dtype=torch.float32),
        latents=latents,
        caption_states=caption_states,
        caption_state_lengths=state_lengths,
    )
