"""Bad input in the loader: fail naming shard and key, or skip within a user budget.

With ``data.max_bad_samples = 0`` (the default) the first sample that breaks the shard contract,
or a tar that cannot be read to its end, stops training with one error naming the shard (and the
sample and key where there is one). With a budget, each problem is counted once for the whole
run: a bad sample by its (shard, key), an unreadable tar by its shard, which is *quarantined*:
the samples read before the damage keep their place in that epoch, and later epochs do not open
it again. A reader process reports each new problem once (a :class:`SkipReport` in its output
stream); the training process keeps the sets in the loader state, so a resumed run neither
counts nor logs them again, and stops once the count exceeds the budget.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from wallwm_pretrain.data.cookers import SampleError
from wallwm_pretrain.data.decode import decode_sample
from wallwm_pretrain.data.errors import InputError, ShardError
from wallwm_pretrain.data.tarread import read_tar

log = logging.getLogger("wallwm_pretrain.data")


class BadInputError(InputError):
    """Bad input beyond what ``data.max_bad_samples`` allows."""


def sample_id(sample: dict) -> str:
    return f"{sample.get('__url__', '?')}#{sample.get('__key__', '?')}"


@dataclass
class SkipReport:
    """New problems found by one reader since its last report (travels with its batches)."""

    bad_samples: list[str] = field(default_factory=list)  # sample ids
    quarantined: list[str] = field(default_factory=list)  # shard urls


@dataclass
class Known:
    """Problems already counted in this run (from the loader state), as a reader sees them."""

    bad_samples: frozenset = frozenset()
    quarantined: dict = field(default_factory=dict)  # shard url -> epoch it was found in


class SkipCounter:
    """Decides skip-or-fail and collects new problems inside one reader pipeline."""

    def __init__(self, budget: int, known: Known) -> None:
        self.budget = budget
        self.known = known
        self.pending = SkipReport()

    def bad_sample(self, sample: dict, exc: SampleError) -> None:
        if self.budget == 0:
            raise exc
        ident = sample_id(sample)
        if ident not in self.known.bad_samples:
            log.warning("skipping bad sample (data.max_bad_samples=%d): %s", self.budget, exc)
            self.pending.bad_samples.append(ident)

    def bad_shard(self, url: str, exc: ShardError) -> None:
        if self.budget == 0:
            raise exc
        if url not in self.known.quarantined:
            log.warning("quarantining shard for the rest of the run (data.max_bad_samples=%d): %s", self.budget, exc)
            self.pending.quarantined.append(url)

    def take(self) -> SkipReport | None:
        report = self.pending
        if not report.bad_samples and not report.quarantined:
            return None
        self.pending = SkipReport()
        return report


def read_shards(urls: Iterable[str], counter: SkipCounter, epoch: int, cache=None) -> Iterator[dict]:
    """Crude samples of each shard in turn; a quarantined shard is not opened after the epoch
    it was found in (in that epoch it is read again up to the damage, so a resumed epoch sees
    exactly the samples the first run saw)."""
    for url in urls:
        found = counter.known.quarantined.get(url)
        if found is not None and found < epoch:
            continue
        try:
            yield from read_tar(url, cache)
        except ShardError as exc:
            counter.bad_shard(url, exc)


def cook_or_skip(src: Iterable[dict], cooker: Callable[[dict], list], counter: SkipCounter) -> Iterator:
    """Decode and cook each sample; a sample already counted bad is dropped silently."""
    for sample in src:
        if sample_id(sample) in counter.known.bad_samples:
            continue
        try:
            cooked = cooker(decode_sample(sample))
        except SampleError as exc:
            counter.bad_sample(sample, exc)
            continue
        yield from cooked


def report_skips(src: Iterable, counter: SkipCounter) -> Iterator:
    """Put a :class:`SkipReport` in the stream before each batch that follows new problems,
    and one at the end for problems after the last batch."""
    for batch in src:
        report = counter.take()
        if report is not None:
            yield report
        yield batch
    report = counter.take()
    if report is not None:
        yield report


def merge_problems(states: list[dict]) -> dict:
    """The problems counted by several loaders (one per data-parallel rank), for a run that
    resumes with another number of ranks."""
    bad = sorted({i for s in states for i in s.get("bad_sample_ids", [])})
    quarantined: dict[str, int] = {}
    for s in states:
        for name, epoch in s.get("quarantined", {}).items():
            quarantined[name] = min(int(epoch), quarantined.get(name, int(epoch)))
    return {"bad_samples": len(bad) + len(quarantined), "bad_sample_ids": bad,
            "quarantined": dict(sorted(quarantined.items()))}
