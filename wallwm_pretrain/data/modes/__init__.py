"""The data modes, by name: the one place ``data.mode`` is turned into behaviour.

``mode_of(cfg.mode)`` gives the :class:`~wallwm_pretrain.data.modes.base.DataMode` that owns
the mode's cooker, batching, balance step, batch type, plan horizon and history; the loader,
evaluation and inference call it instead of comparing mode strings. :func:`check_shard_kind`
refuses a shard folder the mode cannot read, naming the modes that can and how to build the
shards it needs. A new mode is a file beside these and its line in ``MODES`` (and its name in
``config.DATA_MODES``, which ``tests/data/test_modes.py`` holds equal to ``MODES``).
"""

from __future__ import annotations

from pathlib import Path

from wallwm_pretrain.config import ConfigError, DataConfig
from wallwm_pretrain.data.cookers import Normalizer
from wallwm_pretrain.data.extras import Extras
from wallwm_pretrain.data.index import INDEX_FILE, shard_kind
from wallwm_pretrain.data.modes.base import Cooker, DataMode
from wallwm_pretrain.data.modes.chunk import ChunkMode
from wallwm_pretrain.data.modes.conditioner import ConditionerMode
from wallwm_pretrain.data.modes.event import EventMode
from wallwm_pretrain.data.modes.unified import UnifiedMode

__all__ = ["MODES", "DataMode", "check_shard_kind", "make_cooker", "mode_of"]

MODES: dict[str, DataMode] = {m.name: m for m in (EventMode(), ChunkMode(), ConditionerMode(), UnifiedMode())}


def mode_of(name: str) -> DataMode:
    """The mode called ``name`` (``data.mode``); ConfigError naming the modes otherwise."""
    try:
        return MODES[name]
    except KeyError:
        raise ConfigError(f"data.mode must be one of {', '.join(MODES)}, got {name!r}") from None


def make_cooker(cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, extras: Extras = Extras(),
                frame_stride: int = 4, window_clusters: dict | None = None) -> Cooker:
    """``cooker(sample, epoch=e) -> list`` of ``cfg.mode`` (see each mode's :meth:`DataMode.cooker`):
    ``frame_stride`` control steps per latent frame; ``window_clusters``, a window spec, makes
    unified-mode windows carry their cluster ids."""
    return mode_of(cfg.mode).cooker(cfg, caption_max_bytes, norm, extras, frame_stride, window_clusters)


def check_shard_kind(folder: str | Path, index: dict, mode: str) -> None:
    """ConfigError naming the folder, the modes that read its kind and the fix, unless mode
    ``mode`` reads the shards of ``folder`` (index.json ``kind``, see :func:`shard_kind`)."""
    reader = mode_of(mode)
    kind = shard_kind(index)
    if kind in reader.reads:
        return
    where = Path(folder) / INDEX_FILE
    says = f"{where} says \"kind\": \"{kind}\"" if "kind" in index else f"{where} has no \"kind\""
    others = sorted((m for m in MODES.values() if kind in m.reads), key=lambda m: m.reads.index(kind))
    instead = "".join([f"set data.mode={others[0].name}"] + [f" (or {m.name})" for m in others[1:]]) if others else ""
    raise ConfigError(f"data.mode={mode} but {folder} holds {kind} shards ({says}): "
                      f"{instead + ', or ' if instead else ''}{reader.build_hint(folder)}")
