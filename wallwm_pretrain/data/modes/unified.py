"""Unified mode: windows of ``data.chunk_horizon`` steps over whole episodes, with history.

Reads episode shards (``build-episodes``); cooks with
:func:`~wallwm_pretrain.data.unified.make_unified_cooker` (``model.frame_stride`` steps per
latent frame; with window clusters, each window carries its cluster ids and is balanced on
its own); a plan covers ``data.chunk_horizon`` steps after ``data.history_latents`` latent
frames of history. Shares the towers with event mode.
"""

from __future__ import annotations

from pathlib import Path

from wallwm_pretrain.config import DataConfig
from wallwm_pretrain.data.cookers import Normalizer
from wallwm_pretrain.data.extras import Extras
from wallwm_pretrain.data.modes.base import Cooker, DataMode
from wallwm_pretrain.data.unified import make_unified_cooker


class UnifiedMode(DataMode):
    name = "unified"
    reads = ("episode",)
    balances_windows = True
    reads_context = True
    shares_towers = True

    def cooker(self, cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, extras: Extras = Extras(),
               frame_stride: int = 4, window_clusters: dict | None = None) -> Cooker:
        return make_unified_cooker(cfg, caption_max_bytes, norm, extras, frame_stride, window_clusters)

    def history(self, cfg: DataConfig) -> int:
        return cfg.history_latents

    def build_hint(self, folder: str | Path) -> str:
        return (f"build them with `python -m data_tools build-episodes --shards {folder} --out OUT` and set "
                f"data.shards=OUT")
