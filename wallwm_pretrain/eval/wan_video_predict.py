"""The Wan tower's video prediction of a held-out event (``eval worldmodel``, ``train.video_eval_every``).

The video tower never reads the action tower nor the state (the coupling is one-way; the state
token is the action tower's), so the event's predicted video is the video tower's alone, sampled
by ``eval/wan_video.py`` (:func:`~wallwm_pretrain.eval.wan_video.sample_video`) with the
scheduler shift the tower trains with (``model.video_time_shift``):

the event's first frame (every view) -> the frozen VAE (latent frame 0, the condition) -> the
video tower denoises the following latent frames, reading the caption's UMT5 states as Wan's text
context (zero-padded to ``model.text_len``) -> the frozen VAE decodes all latent frames together.

**Which decoded frames are scored.** The VAE is causal with temporal compression r, which equals
``model.frame_stride`` K_p (checked): F latent frames decode to ``1 + r (F - 1)`` frames, latent
frame 0 to frame 0 and latent frame j >= 1 to frames ``r (j - 1) + 1 .. r j``. The shards encode
an event the same way (``data_tools/latents.py``: latent frame j ends at control step r j), so
decoded frame ``r j`` is control step ``K_p j``, the recorded frame the small towers' prediction
is scored against for latent frame j (``recorded_video``: every K_p-th step). The prediction is
therefore the decoded video's every r-th frame: F frames for an event of ``ceil(length / K_p)``
latent frames, at the shards' resolution. Frame 0 is the given first frame, as for the small
towers (the metrics score frames 1.. only).

The frozen VAE and UMT5 are those the training shards were made with (their ``index.json``),
loaded once per process (``model/wan/frozen.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from wallwm_pretrain.eval.heldout import HeldoutEvent, WorldModelError
from wallwm_pretrain.eval.wan_policy import frozen_of
from wallwm_pretrain.eval.wan_video import make_scheduler, sample_video
from wallwm_pretrain.model.wan.text import pad_text_context


class WanTowerVideo:
    """The Wan-tower video prediction of an event (see the module's docstring); event mode
    denoises the whole event from its caption, chunk mode chains ``data.chunk_horizon``-step
    chunks on the task, each from the previous chunk's last predicted frame (open loop), as
    :class:`~wallwm_pretrain.eval.video_predict.SmallTowerVideo` does.

    Args:
        model: a ``WanWallWM`` in eval mode (its ``video`` is the tower); cfg: its run config;
            index: its training shards' ``index.json`` (the frozen models' folders);
            denoise_steps: the scheduler's steps (flow-matching Euler).
    """

    def __init__(self, model, cfg, index: dict, denoise_steps: int) -> None:
        self.model, self.cfg, self.denoise_steps = model, cfg, denoise_steps
        self.device = next(model.parameters()).device
        self.k = cfg.model.frame_stride
        self.mode = cfg.data.mode
        if self.mode not in ("event", "chunk"):
            raise WorldModelError(f"a {self.mode}-mode checkpoint: only event- and chunk-mode checkpoints predict an "
                                  "event's video from its first frame alone (unified mode needs history frames)")
        self.frozen = frozen_of(index, str(self.device))
        if self.frozen.temporal != self.k:
            raise WorldModelError(f"the VAE compresses {self.frozen.temporal} frames per latent frame, the model's "
                                  f"model.frame_stride is {self.k}")
        self.chunk_frames = -(-cfg.data.chunk_horizon // self.k)  # latent frames of a chunk

    def _sample(self, first: np.ndarray, text: str, latent_frames: int, gen: torch.Generator) -> np.ndarray:
        """uint8 ``[latent_frames, V, H, W, 3]``: the given frame, then one decoded frame per latent frame."""
        m, r = self.cfg.model, self.frozen.temporal
        states, valid = self.frozen.text_batch([text])
        context, _ = pad_text_context(states, valid, int(m.text_len), where=f"caption {text!r}")
        frame = torch.from_numpy(np.array(first))[None]  # [1, V, H, W, 3], a copy: shard arrays are read-only
        video = sample_video(self.model.video, self.frozen, frame, context, 1 + r * (latent_frames - 1),
                             self.denoise_steps, gen, scheduler=make_scheduler("euler", float(m.video_time_shift)))
        frames = video.frames[0, :, ::r].permute(1, 0, 2, 3, 4).cpu().numpy()  # [F, V, H, W, 3]
        frames[0] = first
        return frames

    def __call__(self, event: HeldoutEvent, generator: torch.Generator) -> np.ndarray:
        frames = -(-event.length // self.k)
        if self.mode == "event":
            return self._sample(event.frames[0], event.caption, frames, generator)
        out = [event.frames[0]]
        while len(out) < frames:  # chunks chained on their own last predicted frame
            out.extend(self._sample(out[-1], event.task, self.chunk_frames, generator)[1:])
        return np.stack(out[:frames])
