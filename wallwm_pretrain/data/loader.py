"""The training loader: WebDataset shards -> cooked, shuffled, padded batches, forever.

Before the first epoch every shard is checked against index.json (``data.verify``, see
``verify.py``). Filters, in order (WebDataset's word for the steps of one ``DataPipeline``;
one pipeline per epoch):

1. shard list, permuted by (seed, epoch) — the explicit shard shuffle;
2. split by data-parallel rank (explicit node splitter: TP/PP peers of one DP rank read the
   same data) and then by loader worker;
3. tar -> crude samples (``tarread.py``; a damaged shard is quarantined within the skip
   budget, ``badinput.py``);
4. cluster balance (``balance.py``; only when ``data.balance`` departs from the natural mix),
   deciding on the json member before the frames are decoded (in unified mode over shards
   whose windows were clustered, per window after cooking instead: filter 6);
5. sample shuffle buffer seeded by (seed, epoch, rank, worker);
6. decode ``.npy`` / ``.json`` (``decode.py``), cook and batch as the data mode says
   (``modes/``: the mode's cooker, then its batching filter; the per-window balance between
   the two): length-bucketed (``buckets.py``) :class:`~wallwm_pretrain.batch.Batch` in event,
   chunk and unified mode, plain :class:`~wallwm_pretrain.batch.ConditionerBatch` in
   conditioner mode.

The loader position is ``(epoch, batches consumed in the epoch)`` plus the problems counted
so far (bad sample ids, quarantined shards); :meth:`state_dict` and
:meth:`load_state_dict` save and restore it. Restoring rebuilds the epoch's pipeline and
fast-forwards, which re-reads the skipped part of the epoch: exact, but it costs time
proportional to the position inside the epoch.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path
from typing import Iterable, Iterator, Optional

import torch
import webdataset as wds
from torch.utils.data import DataLoader, get_worker_info

from wallwm_pretrain.config import DataConfig
from wallwm_pretrain.data.badinput import (
    BadInputError, Known, SkipCounter, SkipReport, cook_or_skip, read_shards, report_skips,
)
from wallwm_pretrain.batch import Batch
from wallwm_pretrain.data.cache import ShardCache
from wallwm_pretrain.data.cookers import Normalizer, TrainSample
from wallwm_pretrain.data.decode import decode_sample
from wallwm_pretrain.data.errors import ShardError
from wallwm_pretrain.data.extras import load_extras
from wallwm_pretrain.data.index import read_index
from wallwm_pretrain.data.modes import check_shard_kind, mode_of
from wallwm_pretrain.data.source import file_url, is_remote
from wallwm_pretrain.data.tarread import read_tar
from wallwm_pretrain.data.verify import verify_shards

__all__ = ["EventLoader", "ShardError", "read_cooked", "read_index"]


def read_cooked(
    folder: str | Path, cfg: DataConfig, caption_max_bytes: int, norm: Normalizer,
    video_input: str = "pixels", frame_stride: int = 4,
) -> Iterator[TrainSample]:
    """One pass over a shard folder, in file order, cooked as the loader cooks (epoch 0);
    for evaluation and statistics, not training (no split, balance or shuffle). In conditioner
    mode the samples are ``conditioner.ConditionerSample``."""
    index = read_index(folder)
    check_shard_kind(folder, index, cfg.mode)
    urls = [file_url(folder, s["name"]) for s in index["shards"]]
    cooker = mode_of(cfg.mode).cooker(cfg, caption_max_bytes, norm,
                                      load_extras(folder, index, video_input, frame_stride), frame_stride)
    cache = shard_cache(cfg)
    for url in urls:
        for crude in read_tar(url, cache):
            yield from cooker(decode_sample(crude), epoch=0)


def _split_by_rank(src: Iterable[dict], rank: int, world: int) -> Iterator[dict]:
    for i, item in enumerate(src):
        if i % world == rank:
            yield item


def _read_listed(src: Iterable[dict], counter: SkipCounter, epoch: int, cache: Optional[ShardCache]) -> Iterator[dict]:
    return read_shards((item["url"] for item in src), counter, epoch, cache)


def shard_cache(cfg: DataConfig) -> Optional[ShardCache]:
    """The node-local cache of remote shards (``data.cache_dir``), or None."""
    if not cfg.cache_dir or not is_remote(cfg.shards):
        return None
    return ShardCache(cfg.cache_dir, int(cfg.cache_max_gb * 1e9))


def _shuffle(src: Iterable, bufsize: int, seed: tuple[int, ...]) -> Iterator:
    info = get_worker_info()
    rng = random.Random(hash(seed + ((info.id if info else 0),)))
    return wds.shuffle(bufsize=bufsize, initial=bufsize, rng=rng)(src)


class EventLoader:
    """Infinite iterator of :class:`~wallwm_pretrain.batch.Batch` for one data-parallel rank
    (:class:`~wallwm_pretrain.batch.ConditionerBatch` when ``data.mode=conditioner``).

    Args:
        cfg: the ``data`` section of the run config (``mode`` says what a sample is).
        frame_stride: control steps per latent frame (``model.frame_stride``): batches are
            padded to a multiple of it.
        caption_max_bytes: caption length the model reads (``model.caption_max_bytes``).
        dp_rank, dp_size: this rank's place among data-parallel ranks.
        video_input: ``model.video_input``; ``latents`` also reads the VAE latents, and fails
            (ConfigError naming the folder) when index.json records none (``extras.py``).
            Caption states are read whenever index.json records them.
    """

    def __init__(
        self,
        cfg: DataConfig,
        frame_stride: int = 4,
        caption_max_bytes: int = 64,
        dp_rank: int = 0,
        dp_size: int = 1,
        video_input: str = "pixels",
    ) -> None:
        self.cfg = cfg
        self.mode = mode_of(cfg.mode)
        self.index = read_index(cfg.shards)
        check_shard_kind(cfg.shards, self.index, cfg.mode)
        self.extras = load_extras(cfg.shards, self.index, video_input, frame_stride)
        self.cache = shard_cache(cfg)
        verify_shards(cfg.shards, self.index, cfg.verify, self.cache)
        self.urls = [file_url(cfg.shards, s["name"]) for s in self.index["shards"]]
        self.names = {file_url(cfg.shards, s["name"]): s["name"] for s in self.index["shards"]}
        readers = dp_size * max(cfg.num_workers, 1)
        if len(self.urls) < readers:
            raise ShardError(
                f"{cfg.shards}: {len(self.urls)} shards cannot feed dp_size * num_workers = "
                f"{dp_size} * {max(cfg.num_workers, 1)} = {readers} readers; build more shards "
                f"(build-shards --samples-per-shard) or lower data.num_workers"
            )
        self.norm = Normalizer.from_index(self.index)
        self.frame_stride = frame_stride
        # per raw sample, or (unified mode, windows clustered for this run's windows) per window
        self.balance, self.window_spec = self.mode.balance(self.index, cfg, frame_stride)
        self.cooker = self.mode.cooker(cfg, caption_max_bytes, self.norm, self.extras, frame_stride, self.window_spec)
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.epoch = 0
        self.batches_in_epoch = 0
        self.bad_samples = 0  # problems skipped within data.max_bad_samples, over the whole run
        self.bad_sample_ids: set[str] = set()  # "shard#key" of each bad sample counted
        self.quarantined: dict[str, int] = {}  # shard name -> epoch it was found unreadable in
        self._iter: Optional[Iterator[Batch]] = None

    def pipeline(self, epoch: int) -> wds.DataPipeline:
        urls = list(self.urls)
        random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(urls)
        known = Known(
            frozenset(f"{file_url(self.cfg.shards, name)}#{key}"
                      for name, _, key in (i.rpartition("#") for i in self.bad_sample_ids)),
            {file_url(self.cfg.shards, name): found for name, found in self.quarantined.items()},
        )
        counter = SkipCounter(self.cfg.max_bad_samples, known)
        filters: list = [
            wds.SimpleShardList(urls),
            functools.partial(_split_by_rank, rank=self.dp_rank, world=self.dp_size),
            wds.split_by_worker,
            functools.partial(_read_listed, counter=counter, epoch=epoch, cache=self.cache),
        ]
        if self.balance is not None and self.window_spec is None:
            filters.append(functools.partial(self.balance.sample_filter, epoch=epoch))
        if self.cfg.shuffle_buffer > 0:
            filters.append(functools.partial(_shuffle, bufsize=self.cfg.shuffle_buffer, seed=(self.cfg.seed, epoch, self.dp_rank)))
        filters.append(
            functools.partial(cook_or_skip, cooker=functools.partial(self.cooker, epoch=epoch), counter=counter)
        )
        if self.balance is not None and self.window_spec is not None:
            filters.append(functools.partial(self.balance.window_filter, epoch=epoch))
        filters.append(self.mode.batcher(self.cfg, self.frame_stride))  # length buckets, or plain batches
        filters.append(functools.partial(report_skips, counter=counter))
        return wds.DataPipeline(*filters)

    def _start_epoch(self) -> None:
        loader = DataLoader(
            self.pipeline(self.epoch),
            batch_size=None,
            num_workers=self.cfg.num_workers,
            persistent_workers=False,
            # its own generator: starting an epoch (or a fast-forward after a restore) must not
            # draw from the global RNG that the model's flow-matching noise uses
            generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch),
        )
        self._iter = iter(loader)
        for _ in range(self.batches_in_epoch):  # fast-forward after a restore (skips already counted)
            next(self._iter)

    def __iter__(self) -> "EventLoader":
        return self

    def _count(self, report: SkipReport) -> None:
        """Count each problem a reader reports once per run (ids are relative to the folder:
        ``shard name#key``, so a run may move its shards, e.g. to a bucket, and resume)."""
        for ident in report.bad_samples:
            url, _, key = ident.rpartition("#")
            rel = f"{self.names.get(url, url)}#{key}"
            if rel not in self.bad_sample_ids:
                self.bad_sample_ids.add(rel)
                self.bad_samples += 1
        for url in report.quarantined:
            name = self.names.get(url, url)
            if name not in self.quarantined:
                self.quarantined[name] = self.epoch
                self.bad_samples += 1
        if self.bad_samples > self.cfg.max_bad_samples:
            raise BadInputError(
                f"{self.bad_samples} problems skipped so far ({len(self.bad_sample_ids)} bad samples, "
                f"{len(self.quarantined)} unreadable shards) exceed data.max_bad_samples="
                f"{self.cfg.max_bad_samples} (the warnings above name each one)"
            )

    def __next__(self) -> Batch:
        for _ in range(2):
            if self._iter is None:
                self._start_epoch()
            try:
                batch = next(self._iter)
                while isinstance(batch, SkipReport):
                    self._count(batch)
                    batch = next(self._iter)
            except StopIteration:
                if self.batches_in_epoch == 0:
                    break
                self.epoch, self.batches_in_epoch, self._iter = self.epoch + 1, 0, None
                continue
            self.batches_in_epoch += 1
            return batch
        raise ShardError(
            f"{self.cfg.shards}: an epoch on data-parallel rank {self.dp_rank} gives no full batch of "
            f"{self.cfg.batch_size}; lower data.batch_size or add data"
        )

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "batches_in_epoch": self.batches_in_epoch,
            "bad_samples": self.bad_samples,
            "bad_sample_ids": sorted(self.bad_sample_ids),
            "quarantined": dict(sorted(self.quarantined.items())),
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.bad_samples = int(state.get("bad_samples", 0))
        self.bad_sample_ids = set(state.get("bad_sample_ids", []))
        self.quarantined = {str(k): int(v) for k, v in state.get("quarantined", {}).items()}
        self._iter = None
