"""The two kinds of work build-shards hands to worker processes.

``cut_episodes``: for a run of consecutive episodes, read the state/action columns (always:
they feed the statistics and the NaN checks) and, for the episodes whose samples are still
needed, decode the videos, cut one sample per event and spill each sample's bytes to a scratch
file. ``write_shard``: concatenate the spilled samples of one shard into a tar and return its
sha256. Tasks and results are small picklable values; a worker process keeps one open dataset
reader (``_dataset``) across its tasks. Statistics come back per episode and are merged by the
caller in episode order, so floating-point results do not depend on how work was split.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .buildplan import sha256_file
from .cut import check_finite, episode_arrays, event_contexts, make_sample, sample_key
from .events import Event
from .lerobot import open_dataset
from .lerobot.layout import ACTION_KEY, STATE_KEY
from .prune import Pruning
from .tario import DeterministicTarWriter

_OPEN: dict[str, object] = {}  # per process: dataset root -> reader


def worker_dataset(src: str):
    if src not in _OPEN:
        _OPEN[src] = open_dataset(Path(src))
    return _OPEN[src]


def close_datasets() -> None:
    for ds in _OPEN.values():
        ds.close()
    _OPEN.clear()


class RunningStats:
    """Per-dimension mean/std/min/max over row batches (Chan et al. merge, float64)."""

    def __init__(self):
        self.n, self.mean, self.m2, self.lo, self.hi = 0, None, None, None, None

    def update(self, x: np.ndarray) -> None:
        x = x.astype(np.float64).reshape(len(x), -1)
        if len(x):
            other = RunningStats()
            mean = x.mean(0)
            other.n, other.mean, other.m2 = len(x), mean, ((x - mean) ** 2).sum(0)
            other.lo, other.hi = x.min(0), x.max(0)
            self.merge(other)

    def merge(self, other: "RunningStats") -> None:
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2, self.lo, self.hi = (other.n, other.mean.copy(),
                                                            other.m2.copy(), other.lo.copy(),
                                                            other.hi.copy())
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * other.n / n
        self.m2 = self.m2 + other.m2 + delta ** 2 * self.n * other.n / n
        self.lo, self.hi = np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi)
        self.n = n

    def as_dict(self) -> dict:
        std = np.sqrt(self.m2 / max(self.n, 1))
        return {"mean": self.mean.tolist(), "std": std.tolist(), "min": self.lo.tolist(),
                "max": self.hi.tolist(), "count": int(self.n)}


@dataclass
class EpisodeJob:
    episode_index: int
    events: list[Event]  # the events of the level being cut, by index
    by_level: dict[str, list[Event]]  # every level of the episode, for captions of context
    needed: bool  # False: all its samples sit in finished shards; only stats are needed
    video_offset: int = 0  # from `sync`: video frame t + offset shows data row t
    clusters: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (vl, action)


@dataclass
class CutTask:
    src: str
    jobs: list[EpisodeJob]
    image_size: int
    views: list[str]
    spill: str
    pruning: Pruning | None = None  # --prune-static; None or threshold 0: every step kept


def cut_episodes(task: CutTask) -> list[tuple[int, RunningStats, RunningStats]]:
    """Per episode: (episode, action stats, state stats); spills needed samples."""
    ds = worker_dataset(task.src)
    out = []
    for job in task.jobs:
        ep = job.episode_index
        cols = ds.read_columns(ep, [STATE_KEY, ACTION_KEY])
        actions, states = cols[ACTION_KEY], cols[STATE_KEY]
        a_stats, s_stats = RunningStats(), RunningStats()
        for ev in job.events:
            check_finite(ev, "action", actions[ev.start:ev.end])
            check_finite(ev, "state", states[ev.start:ev.end])
            a_stats.update(actions[ev.start:ev.end])
            s_stats.update(states[ev.start:ev.end])
        if job.needed:
            frames = [ds.read_frames(ep, key) for key in ds.video_keys]
            arrays = episode_arrays(ep, states, actions, frames, task.image_size, job.events[0],
                                    ds.video_keys, job.video_offset)
            tasks = ds.episodes[ep].tasks
            contexts = event_contexts(job.events, job.by_level, tasks[0] if tasks else "")
            for ev in job.events:
                key = sample_key(ev)
                members = make_sample(ev, arrays, contexts[ev.index], ds.fps, task.views,
                                      job.clusters.get(key, (0, 0)), task.pruning)
                Path(task.spill, f"{key}.pkl").write_bytes(pickle.dumps(members, protocol=4))
        out.append((ep, a_stats, s_stats))
    return out


@dataclass
class ShardTask:
    name: str
    keys: list[str]
    spill: str
    folder: str


def write_shard(task: ShardTask) -> tuple[str, str]:
    """Write one tar from spilled samples; returns (name, sha256). Written under a temporary
    name and renamed, so a file with a shard's name is always a complete shard."""
    final = Path(task.folder, task.name)
    tmp = final.with_name(final.name + ".tmp")
    with tmp.open("wb") as fh:
        writer = DeterministicTarWriter(fh)
        for key in task.keys:
            writer.write_sample(key, pickle.loads(Path(task.spill, f"{key}.pkl").read_bytes()))
        writer.close()
    os.replace(tmp, final)
    return task.name, sha256_file(final)
