"""The Wan-architecture video tower (Wan2.1 / Wan2.2 text-to-video DiT) on megatron-core layers.

Files: ``config.py`` (the tower's shape, read from a diffusers ``config.json``), ``layers.py``
(column/row-parallel linears with bias, or local ones), ``rope.py`` (3-D rotary embedding),
``attention.py`` (fused attention core, q/k RMS norm across all heads, self- and
cross-attention), ``block.py`` (one Wan block plus cross-view attention), ``conditioning.py``
(flow-time and text embedders), ``tower.py`` (the tower or one pipeline slice of it),
``from_diffusers.py`` (diffusers weights <-> this tower's parameter names, one table both ways),
``flow.py`` (Wan's timestep conventions), ``text.py`` (Wan's zero-padded, unmasked text context),
``frozen.py`` (the frozen VAE and UMT5 at inference, loaded once per process), ``flops.py`` (matmul
FLOPs per sample).
"""

from wallwm_pretrain.model.wan.config import WanConfig
from wallwm_pretrain.model.wan.from_diffusers import (
    MappingReport,
    convert_tower_state,
    diffusers_name,
    load_diffusers_folder,
    load_diffusers_weights,
    map_diffusers_state,
    split_for_diffusers,
)
from wallwm_pretrain.model.wan.tower import WanGeometry, WanStreams, WanTower, coupling_keys

__all__ = [
    "MappingReport",
    "WanConfig",
    "WanGeometry",
    "WanStreams",
    "WanTower",
    "convert_tower_state",
    "coupling_keys",
    "diffusers_name",
    "load_diffusers_folder",
    "load_diffusers_weights",
    "map_diffusers_state",
    "split_for_diffusers",
]
