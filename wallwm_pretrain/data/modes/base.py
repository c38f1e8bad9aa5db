"""What a data mode is: the decisions that follow from what one training sample is.

A data mode (``data.mode``) names what a sample is: a whole event, a fixed chunk, a
conditioner observation, or a unified window over an episode. Everything that follows from
that lives on the mode, in one file per mode (``event.py``, ``chunk.py``, ``conditioner.py``,
``unified.py``): which shard kinds it reads (index.json ``kind``), how a crude sample is
cooked, how the loader balances and batches the cooked samples (and the batch type the model
receives), and, for a policy planning in the mode, how many control steps a plan covers and
how many latent frames of history come before it. The loader, evaluation and inference ask
the mode (:func:`wallwm_pretrain.data.modes.mode_of`) instead of comparing ``data.mode``.

Trade-off: a mode is a small class rather than a table of functions, so the defaults shared by
the three window modes (bucketed batching with :func:`~wallwm_pretrain.data.collate.collate`,
the per-sample balance) are written once; a new mode is one file plus its line in the
registry, at the price of one indirection where the loader used to read a branch in place.
The cooking itself stays in ``cookers.py``, ``unified.py`` and ``conditioner.py``: a mode
binds a cooker, it does not hold one.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, ClassVar

import webdataset as wds

from wallwm_pretrain.batch import Batch
from wallwm_pretrain.config import DataConfig
from wallwm_pretrain.data.balance import ClusterBalance, balance_for
from wallwm_pretrain.data.buckets import bucket_batches
from wallwm_pretrain.data.collate import collate
from wallwm_pretrain.data.cookers import Normalizer
from wallwm_pretrain.data.extras import Extras

Cooker = Callable[..., list]  # cooker(sample, epoch=e) -> cooked samples


class DataMode:
    """One value of ``data.mode``; subclasses set the class attributes and :meth:`cooker`."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]
    """Shard kinds (index.json ``kind``; none = ``event``) this mode reads, the one it is built
    for first."""
    batch_type: ClassVar[type] = Batch
    """What the loader yields in this mode (and the model's step reads)."""
    balances_windows: ClassVar[bool] = False
    """Balance cooked windows by their own clusters when the shards record them (unified mode)."""
    reads_context: ClassVar[bool] = False
    """A sample (and a plan) carries history frames and a text-context source drawn per window."""
    shares_towers: ClassVar[bool] = False
    """Planned by the one backbone of event and unified mode: a checkpoint of either mode may
    plan in the other (with the horizons and history of its config)."""

    def cooker(self, cfg: DataConfig, caption_max_bytes: int, norm: Normalizer, extras: Extras = Extras(),
               frame_stride: int = 4, window_clusters: dict | None = None) -> Cooker:
        """``cooker(sample, epoch=e) -> list`` of cooked samples (``epoch`` by keyword)."""
        raise NotImplementedError

    def horizon(self, cfg: DataConfig) -> int:
        """Control steps one sample (and one plan) covers, before rounding to latent frames."""
        return cfg.chunk_horizon

    def history(self, cfg: DataConfig) -> int:
        """Latent frames of history before the anchor (0: the plan starts from the observation)."""
        return 0

    def balance(self, index: dict, cfg: DataConfig, frame_stride: int) -> tuple[ClusterBalance | None, dict | None]:
        """(the balance the loader applies, the window spec when it balances per window)."""
        return balance_for(index, cfg, frame_stride, per_window=self.balances_windows)

    def batcher(self, cfg: DataConfig, frame_stride: int) -> Any:
        """The loader's batching filter: length buckets (``data.length_buckets``) or plain batches,
        padded by :func:`~wallwm_pretrain.data.collate.collate` to whole latent frames."""
        to_batch = functools.partial(collate, frame_stride=frame_stride)
        if cfg.length_buckets:
            return functools.partial(bucket_batches, batch_size=cfg.batch_size, boundaries=list(cfg.length_buckets),
                                     collate=to_batch)
        return wds.batched(cfg.batch_size, collation_fn=to_batch, partial=False)

    def build_hint(self, folder: str | Path) -> str:
        """How to get shards this mode reads, for the error when a folder holds another kind."""
        return "point data.shards at event shards (build-shards output)"
