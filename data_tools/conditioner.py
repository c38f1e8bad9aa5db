"""Build conditioner shards from event shards: one sample per observation time inside an event.

The text conditioner looks at the cameras at a time t inside an event, with the task and the
captions of the events already done, and predicts the caption of the event in progress (the
next-event description), the control steps left in it, and that caption's text-encoder states.
Each event sample of an event-shard folder gives K observation times

    t = start + floor(i * length / K),  i = 0..K-1   (deduplicated; always includes the start)

and one conditioner sample per time, key ``<event key>_t<t:05d>``, members in this order:

* ``json``: event_key, episode_id, event_index, level, task, done_captions (captions of the
  same episode and level whose end <= t, in event order), caption (the target: the event's own
  caption), next_caption, remaining (end - t, >= 1), time (t), offset (t - start), start, end,
  length, fps, vl_cluster, action_cluster, views, reasoning (the reasoning trace at t that
  Staircase decoding reconstructs: the event's own ``reasoning`` from ``events.jsonl`` when the
  dataset has one, else ``reasoning.reasoning_trace`` of task, done captions, caption, next
  caption and the enclosing event's caption);
* ``observation.npy`` uint8 [V, H, W, C]: the frames at t;
* ``state.npy`` float32 [S]: the state at t.

Two passes over the event shards: the json members first (every event of an episode is needed
for its done captions; the frames are skipped, not read), then one source shard per task
(``--workers`` processes) cutting the observations and spilling each sample to a scratch file;
the shards are then written in a seeded order of all samples (``shardwork.write_shard``). The
output is byte-identical for the same input whatever ``--workers`` is. ``index.json`` has the
event shards' format (per-shard counts, bytes, sha256 and cluster counts, so the loader's
checks and cluster balance work unchanged; dims and the normalisation statistics copied) plus
``"kind": "conditioner"``, ``per_event`` and the source folder with its build key. Event
shards carry no ``kind``: a missing kind means ``"event"``.
"""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .buildplan import INDEX_FILE
from .cut import npy_bytes
from .derive import EventMeta, counts, member_array, shard_plan, staged, start_build, write_shards
from .errors import DataToolsError
from .parallel import run_ordered
from .reasoning import reasoning_trace
from .shardread import iter_tar

KIND = "conditioner"
FORMAT_VERSION = 2  # 2: the json member has "reasoning"
MEMBERS = ("json", "observation.npy", "state.npy")
# index.json keys of the event shards that describe the data and stay true of the observations
COPIED = ("level", "layout", "image_size", "views", "video_keys", "fps", "action_dim",
          "state_dim", "episodes", "event_length", "stats")


def observation_times(start: int, length: int, per_event: int) -> list[int]:
    """t = start + floor(i * length / K), i = 0..K-1, without repeats, in increasing order."""
    return sorted({start + (i * length) // per_event for i in range(per_event)})


def observation_key(event_key: str, t: int) -> str:
    return f"{event_key}_t{t:05d}"


@dataclass(frozen=True)
class Observation:
    """One planned conditioner sample: its key, its row in the event, its json member."""
    key: str
    offset: int  # t - start: the row of the event's frames and states
    meta: bytes  # the json member
    clusters: tuple[int, int]  # (vl, action)
    remaining: int


def _plan(events: list[EventMeta], per_event: int) -> dict[str, list[Observation]]:
    """event key -> its observations; the done captions come from all events of the episode."""
    episodes: dict[tuple, list[EventMeta]] = defaultdict(list)
    for ev in events:
        episodes[(ev.meta["episode_id"], ev.meta["level"])].append(ev)
    for evs in episodes.values():
        evs.sort(key=lambda e: (int(e.meta["event_index"]), e.start))
    plan = {}
    for ev in events:
        m = ev.meta
        siblings = episodes[(m["episode_id"], m["level"])]
        out = []
        for t in observation_times(ev.start, ev.end - ev.start, per_event):
            done = [s.meta["caption"] for s in siblings if s.end <= t]
            own = m.get("reasoning")
            meta = {
                "event_key": ev.key, "episode_id": m["episode_id"], "event_index": m["event_index"],
                "level": m["level"], "task": m.get("task", ""),
                "done_captions": done,
                "caption": m["caption"], "next_caption": m.get("next_caption", ""),
                "remaining": ev.end - t, "time": t, "offset": t - ev.start,
                "start": ev.start, "end": ev.end, "length": ev.end - ev.start,
                "fps": m.get("fps"), "vl_cluster": int(m.get("vl_cluster", 0)),
                "action_cluster": int(m.get("action_cluster", 0)), "views": m.get("views", []),
                "reasoning": own if isinstance(own, str) else reasoning_trace(
                    m.get("task", ""), done, m["caption"], m.get("next_caption", ""),
                    m.get("parent_caption", "")),
            }
            out.append(Observation(observation_key(ev.key, t), t - ev.start,
                                   json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
                                   (meta["vl_cluster"], meta["action_cluster"]), ev.end - t))
        plan[ev.key] = out
    return plan


@dataclass
class CutObservations:
    """One source shard's work: cut the planned observations, spill each sample."""
    src: str
    shard: str
    plan: dict[str, list[Observation]]  # event key -> its observations
    spill: str


def cut_observations(task: CutObservations) -> int:
    """Spill the planned samples of one source shard; returns how many were written."""
    written = 0
    seen = set()
    path = Path(task.src) / task.shard
    for key, members in iter_tar(path, ("frames.npy", "states.npy")):
        if key not in task.plan or key in seen:
            continue
        seen.add(key)
        where = f"{path}: sample {key}"
        why = "conditioner samples need the event's frames and states"
        frames = member_array(members, "frames.npy", where, np.uint8, 5, why)
        states = member_array(members, "states.npy", where, np.float32, 2, why)
        for obs in task.plan[key]:
            if obs.offset >= len(frames) or obs.offset >= len(states):
                raise DataToolsError(f"{where}: {len(frames)} frames and {len(states)} states, "
                                     f"but the span in its json needs {obs.offset + 1}")
            sample = {"json": obs.meta, "observation.npy": npy_bytes(frames[obs.offset]),
                      "state.npy": npy_bytes(states[obs.offset])}
            Path(task.spill, f"{obs.key}.pkl").write_bytes(pickle.dumps(sample, protocol=4))
            written += 1
    if seen != set(task.plan):
        lost = sorted(set(task.plan) - seen)
        raise DataToolsError(f"{path}: samples {lost[:3]} vanished between "
                             "the two passes (was the folder changed while building?)")
    return written


def build_conditioner(src: Path, out: Path, per_event: int = 4, samples_per_shard: int = 256,
                      seed: int = 0, workers: int = 1, progress: bool = True,
                      force: bool = False) -> dict:
    """Write conditioner shards for the event shards at ``src`` into ``out``.

    Returns the content of ``index.json`` (with ``"reused": True`` when ``out`` was already
    built from the same input). Raises DataToolsError subclasses on bad input.
    """
    if per_event < 1 or samples_per_shard < 1 or workers < 1:
        raise DataToolsError(f"--per-event ({per_event}), --samples-per-shard "
                             f"({samples_per_shard}) and --workers ({workers}) must be positive")
    src, out = Path(src), Path(out)
    params = {"format": FORMAT_VERSION, "per_event": per_event,
              "samples_per_shard": samples_per_shard, "seed": seed}
    build = start_build(src, out, KIND, "build-conditioner", params, force, progress)
    if build.done is not None:
        return build.done
    index, key, events = build.index, build.key, build.events
    plan = _plan(events, per_event)
    observations = [obs for ev in events for obs in plan[ev.key]]
    keys = [obs.key for obs in observations]
    clusters = {obs.key: obs.clusters for obs in observations}
    remaining = np.array([obs.remaining for obs in observations])
    names, parts = shard_plan(keys, seed, samples_per_shard)

    with staged(out) as staging:
        by_shard: dict[str, dict] = defaultdict(dict)
        for ev in events:
            by_shard[ev.shard][ev.key] = plan[ev.key]
        tasks = []
        for s in index["shards"]:
            if by_shard.get(s["name"]):
                tasks.append(CutObservations(str(src), s["name"], by_shard[s["name"]],
                                             str(staging / ".spill")))
        cut = sum(run_ordered(cut_observations, tasks, workers, lambda t: str(src / t.shard),
                              "cut observations", progress))
        if cut != len(keys):
            raise DataToolsError(f"{src}: cut {cut} observations, planned {len(keys)}")
        shards = write_shards(staging, names, parts, clusters, workers, progress)
        result = {
            "format_version": FORMAT_VERSION, "kind": KIND, "per_event": per_event, "seed": seed,
            **{k: index[k] for k in COPIED if k in index},
            "source": str(src.resolve()), "events": len(events), "total_samples": len(keys),
            "samples_per_shard": samples_per_shard,
            "remaining": {"min": int(remaining.min()), "max": int(remaining.max()),
                          "mean": round(float(remaining.mean()), 3)},
            "shards": shards,
            "vl_cluster_counts": counts(v for v, _ in clusters.values()),
            "action_cluster_counts": counts(a for _, a in clusters.values()),
            "build": {"key": key, "source": str(src.resolve()),
                      "source_key": (index.get("build") or {}).get("key")},
        }
        (staging / INDEX_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return {**result, "reused": False}
