"""Build WebDataset shards with one sample per event, plus ``index.json``.

Two passes. Pass 1 walks the episodes in storage order (each video decoded once, forward),
cuts the samples of the chosen caption level and spills each sample's bytes to a scratch
file. Pass 2 writes the samples into tars in an order shuffled by ``--seed``. Spilling costs
one extra write and read of the shard bytes, but memory stays at one episode and the shuffle is
a true permutation over all events, not a windowed one. Everything is written into a folder
beside ``--out`` and renamed at the end (see ``fsutil.staged_output``).

Shard format (a contract the training loader relies on), per sample ``epXXXXXX_LN_XXX``:
``json`` (meta), ``actions.npy`` float32 [T, A], ``state.npy`` float32 [S],
``states.npy`` float32 [T, S], ``frames.npy`` uint8 [T, V, H, W, C], with T = end - start.
"""

from __future__ import annotations

import json
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .cut import event_contexts, episode_arrays, make_sample, sample_key
from .errors import DataToolsError, DatasetFormatError, EventError
from .events import EVENTS_FILE, check_level, check_spans, group_events, read_events
from .fsutil import staged_output
from .lerobot import LeRobotV3Dataset
from .lerobot.layout import ACTION_KEY, STATE_KEY
from .tario import DeterministicTarWriter

INDEX_FILE = "index.json"
INDEX_FORMAT_VERSION = 1
SHARD_NAME = "shard-{:06d}.tar"


def view_name(video_key: str) -> str:
    """observation.images.wrist -> wrist."""
    return video_key.split(".")[-1]


def looks_like_shard_folder(path: Path) -> bool:
    names = [p.name for p in path.iterdir()]
    return INDEX_FILE in names and all(n == INDEX_FILE or n.startswith("shard-") for n in names)


class RunningStats:
    """Per-dimension mean/std/min/max over row batches (Chan et al. merge, float64)."""

    def __init__(self):
        self.n, self.mean, self.m2, self.lo, self.hi = 0, None, None, None, None

    def update(self, x: np.ndarray) -> None:
        x = x.astype(np.float64).reshape(len(x), -1)
        if not len(x):
            return
        n_b, mean_b = len(x), x.mean(0)
        m2_b = ((x - mean_b) ** 2).sum(0)
        if self.n == 0:
            self.n, self.mean, self.m2, self.lo, self.hi = n_b, mean_b, m2_b, x.min(0), x.max(0)
            return
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta ** 2 * self.n * n_b / n
        self.lo, self.hi = np.minimum(self.lo, x.min(0)), np.maximum(self.hi, x.max(0))
        self.n = n

    def as_dict(self) -> dict:
        std = np.sqrt(self.m2 / max(self.n, 1))
        return {"mean": self.mean.tolist(), "std": std.tolist(), "min": self.lo.tolist(),
                "max": self.hi.tolist(), "count": int(self.n)}


def _cut_all(ds: LeRobotV3Dataset, grouped, level: str, image_size: int, views: list[str],
             spill: Path, stats: dict[str, RunningStats],
             progress: bool) -> tuple[list[str], dict[str, dict], int]:
    """Pass 1: returns sample keys in canonical order and their small meta for the index."""
    keys, metas = [], {}
    episodes = [ep for ep in ds.episodes if grouped.get(ep, {}).get(level)]
    for ep in tqdm(episodes, desc=f"cut {level} events", unit="ep", disable=not progress):
        by_level = grouped[ep]
        level_events = by_level[level]
        cols = ds.read_columns(ep, [STATE_KEY, ACTION_KEY])
        frames = [ds.read_frames(ep, key) for key in ds.video_keys]
        arrays = episode_arrays(ep, cols[STATE_KEY], cols[ACTION_KEY], frames, image_size,
                                level_events[0], ds.video_keys)
        tasks = ds.episodes[ep].tasks
        contexts = event_contexts(level_events, by_level, tasks[0] if tasks else "")
        for ev in level_events:
            members = make_sample(ev, arrays, contexts[ev.index], ds.fps, views)
            key = sample_key(ev)
            (spill / f"{key}.pkl").write_bytes(pickle.dumps(members, protocol=4))
            keys.append(key)
            stats["action"].update(arrays.actions[ev.start:ev.end])
            stats["state"].update(arrays.states[ev.start:ev.end])
            metas[key] = {"vl_cluster": 0, "action_cluster": 0, "length": ev.end - ev.start}
    return keys, metas, len(episodes)


def _write_shards(out: Path, order: list[str], metas: dict, spill: Path,
                  samples_per_shard: int, progress: bool) -> list[dict]:
    shards = []
    n_shards = (len(order) + samples_per_shard - 1) // samples_per_shard
    for s in tqdm(range(n_shards), desc="write shards", unit="shard", disable=not progress):
        part = order[s * samples_per_shard:(s + 1) * samples_per_shard]
        name = SHARD_NAME.format(s)
        with (out / name).open("wb") as fh:
            writer = DeterministicTarWriter(fh)
            for key in part:
                writer.write_sample(key, pickle.loads((spill / f"{key}.pkl").read_bytes()))
            writer.close()
        shards.append({"name": name, "samples": len(part),
                       "vl_cluster": _counts(metas[k]["vl_cluster"] for k in part),
                       "action_cluster": _counts(metas[k]["action_cluster"] for k in part)})
    return shards


def build_shards(src: Path, out: Path, level: str = "L1", seed: int = 0, image_size: int = 32,
                 samples_per_shard: int = 64, progress: bool = True) -> dict:
    """Cut one sample per ``level`` event of the dataset at ``src`` into shards under ``out``.

    Returns the content of ``index.json``. Raises DataToolsError subclasses on bad input.
    """
    check_level(level)
    if samples_per_shard < 1 or image_size < 1:
        raise DataToolsError(f"--samples-per-shard ({samples_per_shard}) and --image-size "
                             f"({image_size}) must be positive")
    src, out = Path(src), Path(out)
    events = read_events(src / EVENTS_FILE)
    with LeRobotV3Dataset(src) as ds:
        check_spans(events, {ep: m.length for ep, m in ds.episodes.items()})
        grouped = group_events(events)
        if not any(levels.get(level) for levels in grouped.values()):
            raise EventError(f"{src / EVENTS_FILE} has no {level} events")
        views = [view_name(k) for k in ds.video_keys]
        if len(set(views)) != len(views):
            views = list(ds.video_keys)
        for key in (STATE_KEY, ACTION_KEY):
            if key not in ds.features:
                raise DatasetFormatError(f"{src}/meta/info.json: no {key!r} feature")
        state_dim = ds.features[STATE_KEY]["shape"][0]
        action_dim = ds.features[ACTION_KEY]["shape"][0]
        with staged_output(out, looks_like_shard_folder) as tmp:
            spill = tmp / ".spill"
            spill.mkdir()
            stats = {"action": RunningStats(), "state": RunningStats()}
            keys, metas, n_eps = _cut_all(ds, grouped, level, image_size, views, spill, stats,
                                          progress)
            order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
            shards = _write_shards(tmp, order, metas, spill, samples_per_shard, progress)
            for f in spill.iterdir():
                f.unlink()
            spill.rmdir()
            lengths = np.array([m["length"] for m in metas.values()])
            index = {
                "format_version": INDEX_FORMAT_VERSION, "level": level, "seed": seed,
                "source": str(src.resolve()), "image_size": image_size, "views": views,
                "video_keys": list(ds.video_keys), "fps": ds.fps,
                "action_dim": int(action_dim), "state_dim": int(state_dim),
                "total_samples": len(order), "episodes": n_eps,
                "samples_per_shard": samples_per_shard,
                "event_length": {"min": int(lengths.min()), "max": int(lengths.max()),
                                 "mean": round(float(lengths.mean()), 3)},
                # Over every step of every sample: the loader standardises with mean/std.
                "stats": {k: v.as_dict() for k, v in stats.items()},
                "shards": shards,
                "vl_cluster_counts": _total(shards, "vl_cluster"),
                "action_cluster_counts": _total(shards, "action_cluster"),
            }
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return index


def _counts(cluster_ids) -> dict[str, int]:
    """Cluster id -> count, keys as strings (JSON object keys) in numeric order."""
    c = Counter(int(i) for i in cluster_ids)
    return {str(k): c[k] for k in sorted(c)}


def _total(shards: list[dict], field: str) -> dict[str, int]:
    total: Counter = Counter()
    for s in shards:
        total.update({int(k): v for k, v in s[field].items()})
    return {str(k): total[k] for k in sorted(total)}
