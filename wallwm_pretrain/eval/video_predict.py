"""Held-out events, and how a checkpoint predicts an event's video from its first frame.

A *video predictor* is one function: ``predict(event, generator) -> uint8 [F, V, H, W, 3]``,
the event's video at one frame per latent frame (frame ``j`` at control step ``j * K_p``,
``F = ceil(length / K_p)``), frame 0 being the event's first frame, given. It sees the event's
first frame, its caption (or task), its state at the start and its length, nothing recorded
later. The scorer (``eval/worldmodel.py``) only calls such functions, so another video tower
plugs in as one more entry of :data:`PREDICTORS`:

* ``small`` (:class:`SmallTowerVideo`): the small towers denoise patches of pixels
  (``eval/sampler.py``); an event-mode checkpoint denoises the whole event from its caption in
  one go, a chunk-mode checkpoint chains ``data.chunk_horizon``-step chunks conditioned on the
  task, each starting from the previous chunk's last predicted frame (open loop: no recorded
  frame after the first);
* ``wan`` (:class:`~wallwm_pretrain.eval.wan_video_predict.WanTowerVideo`): the Wan tower's video
  sampler (``eval/wan_video.py``) denoises VAE latents from the encoded first frame and the
  caption's UMT5 states, and the frozen VAE decodes them; its every K_p-th decoded frame is one
  latent frame's (``eval/wan_video_predict.py`` says why).

:func:`copy_first_frame` is the baseline that predicts no motion at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from wallwm_pretrain.captions import encode_caption
from wallwm_pretrain.data.cookers import Normalizer, check_sample
from wallwm_pretrain.data.decode import decode_sample
from wallwm_pretrain.data.index import read_index
from wallwm_pretrain.data.tarread import read_tar
from wallwm_pretrain.eval.heldout import HeldoutEvent, WorldModelError
from wallwm_pretrain.eval.sampler import sample_event
from wallwm_pretrain.eval.wan_video_predict import WanTowerVideo
from wallwm_pretrain.model.embeddings import unpatchify


Predictor = Callable[[HeldoutEvent, torch.Generator], np.ndarray]


def recorded_video(event: HeldoutEvent, stride: int) -> np.ndarray:
    """The recorded frames a prediction is scored against: every ``stride``-th control step."""
    return event.frames[::stride]


def read_heldout_events(shards: str | Path, max_steps: int, limit: int | None = None,
                        image_size: int | None = None) -> list[HeldoutEvent]:
    """The first ``limit`` events of a shard folder in file order, each cut to its first
    ``max_steps`` control steps (the horizon the checkpoint plans over).

    Raises:
        WorldModelError: frames of another size than the model's (naming the folder), or no events.
        InputError: a damaged shard or a sample off the shard contract (naming shard and sample).
    """
    index = read_index(shards)
    if image_size is not None and index.get("image_size") not in (None, image_size):
        raise WorldModelError(f"{shards}: frames are {index['image_size']} px, the checkpoint's model takes "
                              f"{image_size} px (build the held-out shards with --image-size {image_size})")
    events: list[HeldoutEvent] = []
    for entry in index["shards"]:
        for crude in read_tar(str(Path(shards) / entry["name"])):
            sample = decode_sample(crude)
            check_sample(sample)
            meta = sample["json"]
            events.append(HeldoutEvent(
                key=sample["__key__"], task=str(meta.get("task", "")), caption=str(meta["caption"]),
                frames=sample["frames.npy"][:max_steps], state=sample["states.npy"][0].astype(np.float32),
            ))
            if limit is not None and len(events) >= limit:
                return events
    if not events:
        raise WorldModelError(f"{shards}: no events")
    return events


def copy_first_frame(event: HeldoutEvent, stride: int) -> np.ndarray:
    """The no-motion baseline: the first frame at every latent frame."""
    frames = -(-event.length // stride)
    return np.repeat(event.frames[:1], frames, axis=0)


def to_pixels(video: torch.Tensor, views: int, size: int, patch: int) -> np.ndarray:
    """The small towers' patch tokens ``[B, F, P, D]`` in [-1, 1] -> uint8 ``[B, F, V, H, W, 3]``
    (the inverse of the training-time scaling ``x / 127.5 - 1``, rounded and clipped)."""
    x = unpatchify(video.float().cpu(), views, size, patch)
    return x.add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8).numpy()


class SmallTowerVideo:
    """The small towers' video prediction of an event (see the module's docstring).

    Args:
        model: a ``WallWM`` in eval mode; cfg: its run config; index: the statistics of its
            training shards (the state is normalised as in training); denoise_steps: Euler steps.
    """

    def __init__(self, model, cfg, index: dict, denoise_steps: int) -> None:
        self.model, self.cfg, self.denoise_steps = model, cfg, denoise_steps
        self.norm = Normalizer.from_index(index)
        self.device = next(model.parameters()).device
        self.k = cfg.model.frame_stride
        self.mode = cfg.data.mode
        if self.mode not in ("event", "chunk"):
            raise WorldModelError(f"a {self.mode}-mode checkpoint: only event- and chunk-mode checkpoints predict an "
                                  "event's video from its first frame alone (unified mode needs history frames)")
        self.chunk = -(-cfg.data.chunk_horizon // self.k) * self.k

    def _sample(self, first: np.ndarray, state: np.ndarray, text: str, steps: int, gen: torch.Generator) -> np.ndarray:
        m = self.cfg.model
        frame = torch.from_numpy(np.array(first))[None].to(self.device)  # a copy: shard arrays are read-only
        st = torch.from_numpy(self.norm.state(state).astype(np.float32))[None].to(self.device)
        caption = torch.from_numpy(encode_caption(text, m.caption_max_bytes))[None].to(self.device)
        _, video = sample_event(self.model, frame, st, caption, steps, self.denoise_steps, gen)
        return to_pixels(video, m.num_views, m.image_size, m.patch_size)[0]

    def __call__(self, event: HeldoutEvent, generator: torch.Generator) -> np.ndarray:
        frames = -(-event.length // self.k)
        if self.mode == "event":
            return self._sample(event.frames[0], event.state, event.caption, frames * self.k, generator)
        out = [event.frames[0]]
        while len(out) < frames:  # chunks chained on their own last predicted frame
            chunk = self._sample(out[-1], event.state, event.task, self.chunk, generator)
            out.extend(chunk[1:])
        return np.stack(out[:frames])


# video tower (model.video_tower) -> the predictor of a checkpoint with that tower: a factory
# (model, run config, statistics of its training shards, denoising steps) -> Predictor
PREDICTORS: dict[str, Callable[..., Predictor]] = {"small": SmallTowerVideo, "wan": WanTowerVideo}


def predictor_for(model, cfg, stats: str | Path, denoise_steps: int) -> Predictor:
    """The video predictor of a loaded towers checkpoint; ``stats``: its training shards'
    ``index.json`` (or their folder), read once the checkpoint is known to predict video."""
    from wallwm_pretrain.eval.policy import read_stats

    if cfg.model.kind != "towers":
        raise WorldModelError(f"a model.kind={cfg.model.kind} checkpoint predicts no video (give the towers')")
    if cfg.model.video_tower not in PREDICTORS:
        raise WorldModelError(f"model.video_tower={cfg.model.video_tower}: no video predictor (they are "
                              f"{', '.join(PREDICTORS)})")
    return PREDICTORS[cfg.model.video_tower](model, cfg, read_stats(stats), denoise_steps)
