"""Event mode: one sample per event, conditioned on its caption (the next-event description).

Reads event shards (``build-shards``); cooks with :func:`~wallwm_pretrain.data.cookers.cook_event`
(events longer than ``data.max_frames`` cropped at a random start); a plan covers
``data.max_frames`` control steps and has no history. Shares the towers with unified mode.
"""

from __future__ import annotations

import functools

from wallwm_pretrain.config import DataConfig
from wallwm_pretrain.data.cookers import Normalizer, cook_event
from wallwm_pretrain.data.extras import Extras
from wallwm_pretrain.data.modes.base import Cooker, DataMode


class EventMode(DataMode):
    name = "event"
    reads = ("event",)
    shares_towers = True

    def cooker(self, cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, extras: Extras = Extras(),
               frame_stride: int = 4, window_clusters: dict | None = None) -> Cooker:
        return functools.partial(cook_event, cfg=cfg, caption_max_bytes=caption_max_bytes, norm=norm, extras=extras)

    def horizon(self, cfg: DataConfig) -> int:
        return cfg.max_frames
