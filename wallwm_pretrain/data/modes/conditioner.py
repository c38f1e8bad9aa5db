"""Conditioner mode: one observation inside an event per sample, for the text conditioner.

Reads conditioner shards (``build-conditioner``); cooks with
:func:`~wallwm_pretrain.data.conditioner.cook_conditioner`; batches plainly (one observation
per sample: nothing to bucket by length) into
:class:`~wallwm_pretrain.batch.ConditionerBatch`. It plans nothing: its checkpoints answer what
the next event is (``eval/planners/predicted.py``), they do not act.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import webdataset as wds

from wallwm_pretrain.batch import ConditionerBatch
from wallwm_pretrain.config import DataConfig
from wallwm_pretrain.data.conditioner import collate_conditioner, make_conditioner_cooker
from wallwm_pretrain.data.cookers import Normalizer
from wallwm_pretrain.data.extras import Extras
from wallwm_pretrain.data.modes.base import Cooker, DataMode


class ConditionerMode(DataMode):
    name = "conditioner"
    reads = ("conditioner",)
    batch_type = ConditionerBatch

    def cooker(self, cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, extras: Extras = Extras(),
               frame_stride: int = 4, window_clusters: dict | None = None) -> Cooker:
        return make_conditioner_cooker(cfg, caption_max_bytes, norm, extras)

    def batcher(self, cfg: DataConfig, frame_stride: int) -> Any:
        return wds.batched(cfg.batch_size, collation_fn=collate_conditioner, partial=False)

    def build_hint(self, folder: str | Path) -> str:
        return (f"build them with `python -m data_tools build-conditioner --src {folder} --out OUT` and set "
                f"data.shards=OUT")
