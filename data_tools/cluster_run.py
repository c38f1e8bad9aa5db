"""Gather events with their captions and actions (from a dataset or from shards), cluster each
level and write the assignments file (see ``clustering`` for the method, ``sidecars`` for the
file). Reading a dataset needs only its parquet columns, never its videos, so clustering a
large dataset costs one pass over the action data plus the caption encoder.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from .annotations import resolve_events
from .clustering import EventItem, cluster_level, summarise
from .errors import DataToolsError, EventError
from .events import check_level, group_events
from .lerobot import open_dataset
from .lerobot.layout import ACTION_KEY
from .shardread import INDEX_FILE, iter_samples, npy
from .sidecars import CLUSTERS_KIND, FORMAT_VERSION, write_json
from . import textenc


def items_from_dataset(src: Path, levels: list[str] | None, events_path, subtask_level
                       ) -> list[EventItem]:
    with open_dataset(src) as ds:
        events, source = resolve_events(src, ds, events_path, subtask_level)
        grouped = group_events(events)
        items = []
        for ep in sorted(grouped):
            if ep not in ds.episodes:
                raise EventError(f"{source}: events name episode {ep}, which {src} does not have")
            chosen = [ev for lv, evs in grouped[ep].items() if levels is None or lv in levels
                      for ev in evs]
            if not chosen:
                continue
            actions = ds.read_columns(ep, [ACTION_KEY])[ACTION_KEY]
            for ev in chosen:
                if ev.end > len(actions):
                    raise EventError(f"{ev.describe()}: span ends after the episode's last frame")
                items.append(EventItem(ep, ev.level, ev.index, ev.caption,
                                       actions[ev.start:ev.end].astype(np.float32)))
    return items


def items_from_shards(folder: Path, levels: list[str] | None) -> list[EventItem]:
    items = []
    for shard, key, m in iter_samples(folder, ("json", "actions.npy")):
        if "json" not in m or "actions.npy" not in m:
            raise DataToolsError(f"{folder / shard}: sample {key} lacks json or actions.npy")
        meta = json.loads(m["json"])
        if levels is None or meta["level"] in levels:
            items.append(EventItem(int(meta["episode_id"]), meta["level"], int(meta["event_index"]),
                                   meta["caption"], npy(m["actions.npy"])))
    return items


def run_clustering(src: Path, out: Path, levels: list[str] | None = None, vl_k: int = 8,
                   action_k: int = 8, resample: int = 16, centre: str = "episode", seed: int = 0,
                   events_path: Path | None = None, subtask_level: str = "L2",
                   examples: int = 3, encode=None) -> dict:
    """Cluster and write ``out``; returns the file's content. ``encode`` replaces the text
    encoder (tests of the plumbing); by default the offline MiniLM encoder is used."""
    if vl_k < 1 or action_k < 1:
        raise DataToolsError(f"--vl-k ({vl_k}) and --action-k ({action_k}) must be positive")
    for lv in levels or []:
        check_level(lv)
    src = Path(src)
    from_shards = (src / INDEX_FILE).is_file()
    items = (items_from_shards(src, levels) if from_shards
             else items_from_dataset(src, levels, events_path, subtask_level))
    if not items:
        raise EventError(f"no events to cluster in {src}" + (f" at level(s) {levels}" if levels else ""))
    encode = encode or textenc.encode
    by_level = defaultdict(list)
    for it in sorted(items, key=lambda it: (it.level, it.episode_index, it.index)):
        by_level[it.level].append(it)
    assignments, summary = [], {}
    for level, its in sorted(by_level.items()):
        vl, act = cluster_level(its, vl_k, action_k, seed, resample, centre, encode)
        summary[level] = {"events": len(its), "vl": summarise(its, vl, examples),
                          "action": summarise(its, act, examples)}
        assignments += [{"episode_index": it.episode_index, "level": level, "index": it.index,
                         "caption": it.caption, "vl_cluster": int(v), "action_cluster": int(a)}
                        for it, v, a in zip(its, vl, act)]
    result = {"kind": CLUSTERS_KIND, "format_version": FORMAT_VERSION, "source": str(src),
              "from": "shards" if from_shards else "dataset", "seed": seed,
              "params": {"vl_k": vl_k, "action_k": action_k, "resample": resample,
                         "centre": centre},
              "text_encoder": f"{textenc.MODEL_NAME} ({textenc.PACKAGE})",
              "levels": summary, "assignments": assignments}
    write_json(out, result)
    return result
