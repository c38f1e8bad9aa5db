"""Bad input in the loader: fail naming shard and key, or skip within a user budget.

With ``data.max_bad_samples = 0`` (the default) the first sample that breaks the shard contract,
or a tar that cannot be read to its end, stops training with an error naming the shard (and the
sample and key where there is one). With a budget, each such problem is skipped, logged as a
warning and counted; the count travels with the next batch to the training process, which
adds it up across workers, saves it with the loader position, reports it to MLflow and stops
once it exceeds the budget. An unreadable tar counts once and loses the rest of that shard.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator

from wallwm_pretrain.data.cookers import SampleError

log = logging.getLogger("wallwm_pretrain.data")


class BadInputError(ValueError):
    """Bad input beyond what ``data.max_bad_samples`` allows."""


class SkipCounter:
    """Counts skips inside one loader pipeline (one per worker after pickling)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.pending = 0  # skipped since the last batch left this pipeline
        self.total = 0

    def skip(self, message: str) -> None:
        if self.budget == 0:
            raise BadInputError(message)
        self.total += 1
        self.pending += 1
        if self.total > self.budget:  # no need to wait for the training process to notice
            raise BadInputError(f"{message} (more than data.max_bad_samples={self.budget} bad samples)")
        log.warning("skipping bad input (%d so far in this reader): %s", self.total, message)

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n

    def tar_handler(self, exn: Exception) -> bool:
        """webdataset handler for tar-level errors; the shard url is the last exception arg."""
        shard = exn.args[-1] if exn.args and isinstance(exn.args[-1], str) else "?"
        self.skip(f"{shard}: unreadable tar ({type(exn).__name__}: {exn.args[0] if exn.args else exn})")
        return True  # go on with the next shard


def cook_or_skip(src: Iterable[dict], cooker: Callable[[dict], list], counter: SkipCounter) -> Iterator:
    for sample in src:
        try:
            cooked = cooker(sample)
        except SampleError as exc:
            if counter.budget == 0:
                raise  # as it is: names shard, sample and key
            counter.skip(str(exc))
            continue
        yield from cooked


def stamp_skips(src: Iterable, counter: SkipCounter) -> Iterator:
    """Attach the pipeline's pending skip count to each batch."""
    for batch in src:
        batch.skipped = counter.take()
        yield batch
