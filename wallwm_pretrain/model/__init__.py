"""The WALL-WM-style model: towers, coupling, embeddings, flow-matching losses."""

from __future__ import annotations

from megatron.core.process_groups_config import ProcessGroupCollection
from torch import nn

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.pipeline_slice import PipelineSlice
from wallwm_pretrain.model.wallwm import LOSS_KEYS, WallWM
from wallwm_pretrain.model.wan_wallwm import WanWallWM


def build_model(cfg: ModelConfig, pipeline_slice: PipelineSlice | None = None, *,
                pg_collection: ProcessGroupCollection | None = None) -> nn.Module:
    """What ``model.kind`` names: the text conditioner (``conditioner``), its Staircase branch
    (``staircase``), or the denoiser
    ``model.video_tower`` names: :class:`WallWM` (``small``) or :class:`WanWallWM` (``wan``)."""
    if cfg.kind == "conditioner":
        # imported here: it loads transformers, which tower runs need not import
        from wallwm_pretrain.model.conditioner.model import TextConditioner
        return TextConditioner(cfg, pipeline_slice, pg_collection=pg_collection)
    if cfg.kind == "staircase":
        from wallwm_pretrain.model.conditioner.staircase_model import StaircaseModel
        return StaircaseModel(cfg, pipeline_slice, pg_collection=pg_collection)
    kind = WanWallWM if cfg.video_tower == "wan" else WallWM
    return kind(cfg, pipeline_slice, pg_collection=pg_collection)


__all__ = ["LOSS_KEYS", "WallWM", "WanWallWM", "build_model"]
