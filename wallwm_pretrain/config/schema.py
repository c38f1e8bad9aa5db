"""The root of the config tree: one section per reader."""

from __future__ import annotations

from dataclasses import dataclass, field

from wallwm_pretrain.config.base import AUTO
from wallwm_pretrain.config.data import DataConfig
from wallwm_pretrain.config.model import DATA_DIMS, ModelConfig
from wallwm_pretrain.config.optim import OptimConfig
from wallwm_pretrain.config.parallel import ParallelConfig
from wallwm_pretrain.config.tracking import TrackingConfig
from wallwm_pretrain.config.train import TrainConfig


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    # A run's data dims default to ``auto`` (read from the shards); a ModelConfig built alone
    # (tests, benchmarks) keeps concrete laptop-sized numbers so it builds a model by itself.
    model: ModelConfig = field(default_factory=lambda: ModelConfig(**{k: AUTO for k in DATA_DIMS}))
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
