"""Length-bucketed batching: a batch takes events of similar length, so little is padding.

Samples arrive in (shuffled) stream order and wait in the bucket of their length
(``data.length_buckets`` are upper bounds; longer samples share a last bucket). A bucket that
holds ``batch_size`` samples is emitted as a batch. When the stream ends, the leftovers of all
buckets are sorted by length and emitted as full batches; only the final remainder smaller
than a batch is dropped, as in plain batching. Deterministic for a given stream order.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable, Iterator, Sequence

from wallwm_pretrain.data.cookers import TrainSample


def bucket_batches(
    src: Iterable[TrainSample],
    batch_size: int,
    boundaries: Sequence[int],
    collate: Callable[[list[TrainSample]], object],
) -> Iterator[object]:
    buckets: list[list[TrainSample]] = [[] for _ in range(len(boundaries) + 1)]
    for sample in src:
        bucket = buckets[bisect.bisect_left(boundaries, sample.length)]
        bucket.append(sample)
        if len(bucket) == batch_size:
            yield collate(bucket[:])
            bucket.clear()
    rest = sorted((s for b in buckets for s in b), key=lambda s: s.length)
    for i in range(0, len(rest) - batch_size + 1, batch_size):
        yield collate(rest[i : i + batch_size])
