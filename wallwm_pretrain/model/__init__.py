"""The WALL-WM-style model: towers, coupling, embeddings, flow-matching losses."""

from __future__ import annotations

from megatron.core.process_groups_config import ProcessGroupCollection

from wallwm_pretrain.config import ModelConfig
from wallwm_pretrain.model.denoiser import LOSS_KEYS, DualTowerDenoiser
from wallwm_pretrain.model.interface import Denoiser, TrainableModel
from wallwm_pretrain.model.pipeline_slice import PipelineSlice
from wallwm_pretrain.model.wallwm import WallWM
from wallwm_pretrain.model.wan_wallwm import WanWallWM


def denoiser_class(cfg: ModelConfig) -> type[DualTowerDenoiser]:
    """The denoiser of the video tower ``model.video_tower`` names: :class:`WallWM` (``small``)
    or :class:`WanWallWM` (``wan``). The one place that maps the name to a class (the model's
    registry, as ``data/modes/`` is the data's: everything else asks the class)."""
    return WanWallWM if cfg.video_tower == "wan" else WallWM


def boundary_width(cfg: ModelConfig) -> int:
    """Width of the tensor pipeline ranks exchange (the pipeline config's hidden size)."""
    return denoiser_class(cfg).boundary_width(cfg)


def build_model(cfg: ModelConfig, pipeline_slice: PipelineSlice | None = None, *,
                pg_collection: ProcessGroupCollection | None = None) -> TrainableModel:
    """What ``model.kind`` names: the text conditioner (``conditioner``), its Staircase branch
    (``staircase``), or the denoiser of :func:`denoiser_class`. The one place that maps the kind
    to a class (a registry of three entries; the conditioner's are imported only when built)."""
    if cfg.kind == "conditioner":
        # imported here: it loads transformers, which tower runs need not import
        from wallwm_pretrain.model.conditioner.model import TextConditioner
        return TextConditioner(cfg, pipeline_slice, pg_collection=pg_collection)
    if cfg.kind == "staircase":
        from wallwm_pretrain.model.conditioner.staircase_model import StaircaseModel
        return StaircaseModel(cfg, pipeline_slice, pg_collection=pg_collection)
    return denoiser_class(cfg)(cfg, pipeline_slice, pg_collection=pg_collection)


__all__ = [
    "LOSS_KEYS", "Denoiser", "DualTowerDenoiser", "TrainableModel", "WallWM", "WanWallWM",
    "boundary_width", "build_model", "denoiser_class",
]
