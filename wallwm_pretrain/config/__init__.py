"""The one configuration schema of wallwm-pretrain (a package: one file per section).

Every run is described by a tree of dataclasses, loaded through ``OmegaConf.structured`` so
that a YAML preset (``configs/*.yaml``) or a ``key=value`` override that names an unknown key
or gives a value of the wrong type fails before any work starts. The error names the bad key
and the nearest valid one. Cross-field checks live in ``__post_init__`` / :func:`validate`.

Each section belongs to the code that reads it: ``data`` to ``wallwm_pretrain.data`` (what a
sample is, how batches are drawn), ``model`` to ``wallwm_pretrain.model`` (including what the
model consumes: control steps per latent frame, caption length), ``optim`` to
``wallwm_pretrain.optim``, ``train`` to the trainer, ``parallel`` to ``wallwm_pretrain.parallel``.
Keys that moved between sections fail naming their new place (:data:`MOVED_KEYS`); configs
stored in checkpoints written before the move are translated (:func:`config_from_stored`).

Layout: ``base`` (the error type, ``auto``), one file per section (``data``, ``model`` with
``wan`` and ``conditioner``, ``optim``, ``train``, ``parallel``, ``tracking``), ``schema`` (the
root), ``rules`` (checks across sections) and ``loading`` (YAML, overrides, stored configs).
Everything is re-exported here: ``from wallwm_pretrain.config import ModelConfig``.

Trade-off: dataclasses cannot express "one of these sub-schemas", so mode-specific fields
(for example ``data.chunk_horizon``) sit beside the switch that uses them.
"""

from wallwm_pretrain.config.base import AUTO, ConfigError
from wallwm_pretrain.config.conditioner import ConditionerConfig, ContextConfig, StaircaseConfig
from wallwm_pretrain.config.data import CONTEXT_SOURCES, DATA_MODES, BalanceConfig, CaptionDropConfig, DataConfig
from wallwm_pretrain.config.loading import MOVED_KEYS, config_from_stored, flatten, load_config, read_yaml, to_yaml
from wallwm_pretrain.config.model import (
    ACTION_PRETRAIN_MAPPINGS,
    DATA_DIMS,
    MODEL_KINDS,
    VIDEO_INPUTS,
    VIDEO_TOWERS,
    ActionPretrainConfig,
    ModelConfig,
)
from wallwm_pretrain.config.optim import OptimConfig
from wallwm_pretrain.config.parallel import ParallelConfig
from wallwm_pretrain.config.rules import validate
from wallwm_pretrain.config.schema import Config
from wallwm_pretrain.config.tracking import TrackingConfig
from wallwm_pretrain.config.train import TrainConfig, parse_duration
from wallwm_pretrain.config.wan import WanTowerConfig

__all__ = [
    "ACTION_PRETRAIN_MAPPINGS", "AUTO", "CONTEXT_SOURCES", "DATA_DIMS", "DATA_MODES", "MODEL_KINDS", "MOVED_KEYS",
    "VIDEO_INPUTS", "VIDEO_TOWERS", "ActionPretrainConfig", "BalanceConfig", "CaptionDropConfig", "Config",
    "ConditionerConfig", "ConfigError", "ContextConfig", "DataConfig", "ModelConfig", "OptimConfig", "ParallelConfig",
    "StaircaseConfig", "TrackingConfig", "TrainConfig", "WanTowerConfig", "config_from_stored", "flatten",
    "load_config", "parse_duration", "read_yaml", "to_yaml", "validate",
]
