"""Model dims from the data: ``model.action_dim``, ``state_dim``, ``num_views`` and
``image_size`` set to ``auto`` take what the shards' index.json records.

The run config stays the schema (``wallwm_pretrain/config.py``); this module reads the data and
returns a config whose dims are numbers, before the model is built. An explicit value that
disagrees with the index fails here, naming both numbers and the shard folder, instead of as a
shape error deep in the model's first forward. The data's fps is not resolved: no model field
depends on it. Trade-off: a folder whose index records no dims (shards written by hand) needs
them set explicitly.
"""

from __future__ import annotations

import dataclasses

from wallwm_pretrain.config import AUTO, DATA_DIMS, Config, ConfigError, validate
from wallwm_pretrain.data.extras import check_video_input
from wallwm_pretrain.data.index import INDEX_FILE, read_index
from wallwm_pretrain.data.source import file_url


def index_dims(index: dict) -> dict[str, int]:
    """The model dims an index records (``views`` is a list of view names)."""
    dims = {k: index[k] for k in ("action_dim", "state_dim", "image_size") if k in index}
    if "views" in index:
        dims["num_views"] = len(index["views"])
    return dims


def resolve_data_dims(cfg: Config, index: dict | None = None) -> Config:
    """``cfg`` with every data dim of ``cfg.model`` a number taken from, or checked against,
    the index of ``cfg.data.shards``.

    Raises:
        ConfigError: an explicit value disagrees with the index, or ``auto`` where the index
            records nothing, or ``model.video_input=latents`` where it records no latents.
        ShardError: the index cannot be read.
    """
    folder = cfg.data.shards
    index = read_index(folder) if index is None else index
    check_video_input(folder, index, cfg.model.video_input, cfg.model.frame_stride)
    recorded = index_dims(index)
    resolved = {}
    for name in DATA_DIMS:
        value = getattr(cfg.model, name)
        found = recorded.get(name)
        if value == AUTO:
            if found is None:
                raise ConfigError(
                    f"model.{name}=auto but {file_url(folder, INDEX_FILE)} records no "
                    f"{'views' if name == 'num_views' else name}; set model.{name} explicitly"
                )
            resolved[name] = found
        elif found is not None and value != found:
            raise ConfigError(
                f"model.{name}={value} but the shards in {folder} have {name} {found} "
                f"(index.json); set model.{name}={found} or auto"
            )
    # only the conditioner's heads take a dim from the text states index.json records; a model
    # kind's dims belong with its schema (config), which this reads rather than dispatches on
    if cfg.model.kind == "conditioner":
        conditioner = _conditioner_text_dim(cfg, index)
        if conditioner is not cfg.model.conditioner:
            resolved["conditioner"] = conditioner
    if not resolved:
        return cfg
    model = dataclasses.replace(cfg.model, **resolved)  # runs ModelConfig's checks again
    out = dataclasses.replace(cfg, model=model)
    validate(out)
    return out


def _conditioner_text_dim(cfg: Config, index: dict):
    """``model.conditioner`` with ``text_dim`` from the text states index.json records (the
    alignment head's target), or checked against them."""
    c = cfg.model.conditioner
    spec = index.get("text_states")
    found = spec.get("dim") if isinstance(spec, dict) and spec.get("complete") else None
    where = file_url(cfg.data.shards, INDEX_FILE)
    if found is None and c.l_align > 0:
        raise ConfigError(
            f"model.kind=conditioner trains the alignment head on the text encoder's states of each caption, "
            f"but {where} records none: run `python -m data_tools embed-captions --shards {cfg.data.shards} "
            f"--text-encoder DIR`, or set model.conditioner.l_align=0"
        )
    if c.text_dim == AUTO:
        return dataclasses.replace(c, text_dim=int(found) if found is not None else 1)
    if found is not None and c.text_dim != found:
        raise ConfigError(f"model.conditioner.text_dim={c.text_dim} but {where} records text states of width "
                          f"{found}; set model.conditioner.text_dim={found} or auto")
    return c
