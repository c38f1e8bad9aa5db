"""Chunk mode (the baseline): fixed windows of ``data.chunk_horizon`` steps, task-conditioned.

Reads event or episode shards; cooks with :func:`~wallwm_pretrain.data.cookers.cook_chunks`;
a plan covers ``data.chunk_horizon`` steps, no history. Episode shards' window clusters are
unified mode's, so chunk mode balances per sample. A chunk-mode checkpoint plans as trained.
"""

from __future__ import annotations

import functools
from pathlib import Path

from wallwm_pretrain.config import DataConfig
from wallwm_pretrain.data.cookers import Normalizer, cook_chunks
from wallwm_pretrain.data.extras import Extras
from wallwm_pretrain.data.modes.base import Cooker, DataMode


class ChunkMode(DataMode):
    name = "chunk"
    reads = ("event", "episode")

    def cooker(self, cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, extras: Extras = Extras(),
               frame_stride: int = 4, window_clusters: dict | None = None) -> Cooker:
        return functools.partial(cook_chunks, cfg=cfg, caption_max_bytes=caption_max_bytes, norm=norm, extras=extras)

    def build_hint(self, folder: str | Path) -> str:
        return "point data.shards at event or episode shards (build-shards or build-episodes output)"
