"""Build WebDataset shards with one sample per event, plus ``index.json``.

The sample list (one key per event of the level) and its seeded shuffle are known from the
events alone, so every shard's membership is fixed before any video is decoded. That allows:

* skipping: shards of an earlier run with the same build key are kept if their sha256 still
  matches, and only episodes with samples in missing shards are decoded (``buildplan``);
* parallelism: pass 1 hands runs of consecutive episodes to ``--workers`` processes, which
  decode, cut and spill each sample to a scratch file; pass 2 writes the shards in parallel;
* byte-identical output whatever ``--workers`` is: sample bytes depend only on their event,
  shard contents only on the seeded order, and per-episode statistics are merged in episode
  order by this process.

Memory stays at one decoded episode per worker; the price is a scratch copy of the samples on
disk (inside the staging folder) until the shards are written.

Shard format (a contract the training loader relies on), per sample ``epXXXXXX_LN_XXX``:
``json`` (meta), ``actions.npy`` float32 [T, A], ``state.npy`` float32 [S],
``states.npy`` float32 [T, S], ``frames.npy`` uint8 [T, V, H, W, C], with T = end - start
(with ``prune_static`` > 0: T = len(meta["kept_steps"]), see ``prune``).
``encode-latents`` and ``embed-captions`` add members later, in place (see ``augment``).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from .annotations import resolve_events
from .buildplan import INDEX_FILE, Staging, build_key, dataset_fingerprint, up_to_date
from .cut import sample_key
from .errors import DataToolsError, DatasetFormatError, EventError, OutputExistsError
from .events import check_level, check_spans, group_events
from .lerobot import open_dataset
from .lerobot.layout import ACTION_KEY, STATE_KEY
from .parallel import chunks, run_ordered
from .prune import check_pruning, count_pruning, folder_metas
from .shardwork import (CutTask, EpisodeJob, RunningStats, ShardTask, close_datasets,
                        cut_episodes, write_shard)
from .sidecars import load_assignments, load_offsets

INDEX_FORMAT_VERSION = 1  # additive changes (more keys) keep the version
SHARD_NAME = "shard-{:06d}.tar"


def view_name(video_key: str) -> str:
    """observation.images.wrist -> wrist."""
    return video_key.split(".")[-1]


# Files that encode-latents / embed-captions add beside index.json.
SIDE_FILES = ("empty_text_states.npy",)


def looks_like_shard_folder(path: Path) -> bool:
    names = [p.name for p in path.iterdir()]
    return INDEX_FILE in names and all(n == INDEX_FILE or n in SIDE_FILES or n.startswith("shard-")
                                       for n in names)


def _counts(cluster_ids) -> dict[str, int]:
    """Cluster id -> count, keys as strings (JSON object keys) in numeric order."""
    c = Counter(int(i) for i in cluster_ids)
    return {str(k): c[k] for k in sorted(c)}


def _cluster_map(path: Path | None, level_events) -> dict[str, tuple[int, int]]:
    if path is None:
        return {sample_key(ev): (0, 0) for ev in level_events}
    table = load_assignments(path)
    missing = [ev for ev in level_events if (ev.episode_index, ev.level, ev.index) not in table]
    if missing:
        raise EventError(f"{path} has no cluster assignment for {len(missing)} event(s), e.g. "
                         f"{missing[0].describe()}; re-run `cluster` on these events")
    return {sample_key(ev): table[(ev.episode_index, ev.level, ev.index)] for ev in level_events}


def _offsets(path: Path | None, episodes: list[int]) -> dict[int, int]:
    if path is None:
        return {}
    table = load_offsets(path)
    missing = [ep for ep in episodes if ep not in table]
    if missing:
        raise DataToolsError(f"{path} has no offset for episode(s) {missing[:5]}; re-run `sync`")
    return table


def _describe(task) -> str:
    """How an error names a task that was running in a worker process."""
    if isinstance(task, CutTask):
        return f"episodes {task.jobs[0].episode_index}..{task.jobs[-1].episode_index}"
    return f"shard {task.name}"


def build_shards(src: Path, out: Path, level: str = "L1", seed: int = 0, image_size: int = 32,
                 samples_per_shard: int = 64, progress: bool = True, workers: int = 1,
                 events_path: Path | None = None, subtask_level: str = "L2",
                 clusters: Path | None = None, sync: Path | None = None,
                 force: bool = False, prune_static: float = 0.0,
                 prune_min_steps: int = 5) -> dict:
    """Cut one sample per ``level`` event of the dataset at ``src`` into shards under ``out``.

    ``prune_static`` > 0 drops quasi-static steps from each event (``prune``: the motion
    threshold; ``prune_min_steps``: events that would keep fewer steps are kept whole); 0 leaves
    the output byte-identical to a build without it.

    Returns the content of ``index.json`` (with ``"reused"``: shards kept from an earlier run).
    Raises DataToolsError subclasses on bad input.
    """
    check_level(level)
    pruning = check_pruning(prune_static, prune_min_steps)
    if samples_per_shard < 1 or image_size < 1 or workers < 1:
        raise DataToolsError(f"--samples-per-shard ({samples_per_shard}), --image-size "
                             f"({image_size}) and --workers ({workers}) must be positive")
    src, out = Path(src), Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not looks_like_shard_folder(out))):
        raise OutputExistsError(f"{out} exists, is not empty and does not look like output of this "
                             "tool; refusing to replace it (choose another --out or remove it yourself)")
    with open_dataset(src) as ds:
        events, source = resolve_events(src, ds, events_path, subtask_level)
        check_spans(events, {ep: m.length for ep, m in ds.episodes.items()})
        grouped = group_events(events)
        episodes = [ep for ep in ds.episodes if grouped.get(ep, {}).get(level)]
        if not episodes:
            raise EventError(f"no {level} events in {source}")
        for key in (STATE_KEY, ACTION_KEY):
            if key not in ds.features:
                raise DatasetFormatError(f"{src}/meta/info.json: no {key!r} feature")
        views = [view_name(k) for k in ds.video_keys]
        if len(set(views)) != len(views):
            views = list(ds.video_keys)
        level_events = [ev for ep in episodes for ev in grouped[ep][level]]
        cluster_of = _cluster_map(clusters, level_events)
        offsets = _offsets(sync, episodes)
        params = {"format": INDEX_FORMAT_VERSION, "level": level, "seed": seed,
                  "image_size": image_size, "samples_per_shard": samples_per_shard}
        if pruning.active:  # only then: a build without pruning keeps its earlier build key
            params["prune"] = {"threshold": pruning.threshold, "min_steps": pruning.min_steps}
        key = build_key(params, events, dataset_fingerprint(src, ds.meta_files()),
                        {"clusters": clusters, "sync": sync})
        head = {"format_version": INDEX_FORMAT_VERSION, "level": level, "seed": seed,
                "source": str(src.resolve()), "layout": ds.layout, "image_size": image_size,
                "views": views, "video_keys": list(ds.video_keys), "fps": ds.fps,
                "action_dim": int(ds.features[ACTION_KEY]["shape"][0]),
                "state_dim": int(ds.features[STATE_KEY]["shape"][0])}
    keys = [sample_key(ev) for ev in level_events]
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    parts = [order[i:i + samples_per_shard] for i in range(0, len(order), samples_per_shard)]
    names = [SHARD_NAME.format(s) for s in range(len(parts))]
    if not force and (index := up_to_date(out, key)) is not None:
        return {**index, "reused": len(names)}

    staging = Staging(out, key, names, force)
    try:
        todo = [(n, p) for n, p in zip(names, parts) if n not in staging.done]
        needed = {k for _, p in todo for k in p}
        jobs = [EpisodeJob(ep, grouped[ep][level], dict(grouped[ep]),
                           any(sample_key(ev) in needed for ev in grouped[ep][level]),
                           offsets.get(ep, 0),
                           {sample_key(ev): cluster_of[sample_key(ev)] for ev in grouped[ep][level]})
                for ep in episodes]
        spill = staging.path / ".spill"
        spill.mkdir(exist_ok=True)
        tasks = [CutTask(str(src), c, image_size, views, str(spill),
                         pruning if pruning.active else None) for c in chunks(jobs, workers)]
        stats = {"action": RunningStats(), "state": RunningStats()}
        for result in run_ordered(cut_episodes, tasks, workers, _describe, f"cut {level} events",
                                  progress):
            for _, a, s in result:  # results arrive in episode order
                stats["action"].merge(a)
                stats["state"].merge(s)
        shard_tasks = [ShardTask(n, p, str(spill), str(staging.path)) for n, p in todo]
        for name, sha in run_ordered(write_shard, shard_tasks, workers, _describe, "write shards",
                                     progress):
            staging.mark_done(name, sha)
        shutil.rmtree(spill)
        lengths = np.array([ev.length for ev in level_events])
        # bytes and sha256 let the training loader verify each shard before it starts
        shards = [{"name": n, "samples": len(p), "bytes": (staging.path / n).stat().st_size,
                   "sha256": staging.done[n],
                   "vl_cluster": _counts(cluster_of[k][0] for k in p),
                   "action_cluster": _counts(cluster_of[k][1] for k in p)}
                  for n, p in zip(names, parts)]
        index = {**head, "total_samples": len(order), "episodes": len(episodes),
                 "samples_per_shard": samples_per_shard,
                 "event_length": {"min": int(lengths.min()), "max": int(lengths.max()),
                                  "mean": round(float(lengths.mean()), 3)},
                 # Over every step of every sample: the loader standardises with mean/std.
                 # With pruning, over every step before pruning: finished shards' episodes
                 # are not decoded on a re-run, and pruned and unpruned builds of the same
                 # events then share their statistics (stage 1 hands its weights to stage 2).
                 "stats": {k: v.as_dict() for k, v in stats.items()},
                 "shards": shards,
                 "vl_cluster_counts": _counts(v for v, _ in cluster_of.values()),
                 "action_cluster_counts": _counts(a for _, a in cluster_of.values()),
                 "build": {"key": key, "clusters": str(clusters) if clusters else None,
                           "sync": str(sync) if sync else None}}
        if pruning.active:
            # From the written samples' meta, reused shards included: a resumed build reports
            # the same totals as one that ran through.
            index["pruning"] = count_pruning(folder_metas(staging.path, names), pruning)
        (staging.path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        reused = staging.reused
        staging.finish()
    except DataToolsError:
        staging.discard()  # the input has to change, so nothing here can be reused
        print(f"note: removed the partial output {staging.path}; {out} was left unchanged",
              file=sys.stderr)
        raise
    except BaseException:
        print(f"note: partial output kept in {staging.path}; re-run the same command to "
              "resume (finished shards are kept)", file=sys.stderr)
        raise
    finally:
        close_datasets()
    return {**index, "reused": reused}
