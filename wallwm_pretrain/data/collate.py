"""Variable-length samples -> one padded batch with lengths (masks are derived from them).

Padding goes to the batch's longest sample, rounded up to a multiple of ``frame_stride`` so
that action groups and latent frames line up; padded steps are zero and masked out of every
attention and loss by ``lengths``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from wallwm_pretrain.data.cookers import TrainSample


@dataclass
class EventBatch:
    frames: torch.Tensor  # uint8 [B, T, V, H, W, C]
    actions: torch.Tensor  # float32 [B, T, A]
    state: torch.Tensor  # float32 [B, S]
    lengths: torch.Tensor  # int64 [B]
    caption: torch.Tensor  # int64 [B, L], 0 = pad
    keys: list[str]
    skipped: int = 0  # bad samples skipped (within data.max_bad_samples) since the last batch
    remaining: torch.Tensor | None = None  # float32 [B] control steps to each sample's event end

    def to(self, device: torch.device) -> "EventBatch":
        move = lambda x: x.to(device, non_blocking=True)  # noqa: E731
        return EventBatch(
            move(self.frames), move(self.actions), move(self.state), move(self.lengths), move(self.caption), self.keys,
            self.skipped, None if self.remaining is None else move(self.remaining),
        )

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    def padding_efficiency(self) -> float:
        """Real control steps / padded control steps."""
        return float(self.lengths.sum()) / float(self.lengths.shape[0] * self.actions.shape[1])


def collate(samples: list[TrainSample], frame_stride: int) -> EventBatch:
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
    return EventBatch(
        frames=torch.from_numpy(frames),
        actions=torch.from_numpy(actions),
        state=torch.from_numpy(np.stack([s.state for s in samples]).astype(np.float32)),
        lengths=torch.tensor([s.length for s in samples], dtype=torch.int64),
        caption=torch.from_numpy(caption),
        keys=[s.key for s in samples],
        remaining=torch.tensor([s.remaining for s in samples], dtype=torch.float32),
    )
