"""Build episode shards from event shards: one sample per episode, its events in order.

Unified mode trains fixed windows that cross event boundaries, so it reads whole episodes. The
events of one caption level tile an episode; this joins each episode's event samples (the level
the event shards hold), ordered by start, into one sample, key ``ep<episode:06d>_<level>``,
members in the shard contract's order:

* ``json``: episode_id, level, task, caption (= task: the whole episode's instruction), fps,
  start / end / length (the episode sample's span in the episode's frames), views, vl_cluster /
  action_cluster (the most common among its events; ties: the smaller id), and ``events``:
  one entry per event in time order, {caption, start, end (relative to the episode sample),
  event_index, level, reasoning (only when the event has one)};
* ``actions.npy`` float32 [T, A], ``state.npy`` float32 [S] (the state at the first step),
  ``states.npy`` float32 [T, S], ``frames.npy`` uint8 [T, V, H, W, C]: the events' steps
  concatenated in time order (T = the sum of the event lengths);
* when the event samples carry text-encoder states (``embed-captions`` ran on the event shards):
  ``event_states.npy`` float16 [E, L, D] (each event's ``caption_states.npy``, zero padded to the
  longest), ``event_states_len.npy`` int32 [E] (their real lengths) and ``task_states.npy``
  (the first event's: every event of an episode has the same task).

**Gaps and overlaps.** Consecutive events must meet exactly (``end`` of one = ``start`` of the
next): a gap would join steps that are not adjacent in time, an overlap would repeat steps.
By default such an episode stops the build with an error naming it and the two spans;
``--gaps skip`` leaves those episodes out instead (the summary counts them).

**Latents are not joined.** Each event was encoded by the causal VAE on its own (its first
frame alone makes latent frame 0), so event latents do not concatenate into an episode's: run
``encode-latents`` on the episode shards. Event shards' ``latents`` are not carried over.

Two passes over the event shards, as build-conditioner: the json members (to plan the
episodes), then one source shard per task spilling the members each event needs; episodes are
then joined (``--workers`` processes) and written in a seeded order. ``index.json`` has the
event shards' format (per-shard counts, bytes, sha256, cluster counts; dims and normalisation
statistics copied: the episodes hold exactly the events' steps, all of them unless ``--gaps
skip`` left episodes out) plus ``"kind": "episode"``.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .buildplan import INDEX_FILE
from .cut import npy_bytes
from .derive import EventMeta, counts, member_array, shard_plan, staged, start_build, write_shards
from .errors import DataToolsError
from .parallel import chunks, run_ordered
from .shardread import iter_tar

KIND = "episode"
FORMAT_VERSION = 1
GAP_POLICIES = ("error", "skip")
ARRAYS = ("actions.npy", "states.npy", "frames.npy")
TEXT_MEMBERS = ("caption_states.npy", "task_states.npy")
EVENT_STATES = "event_states.npy"
EVENT_STATES_LEN = "event_states_len.npy"
COPIED = ("layout", "image_size", "views", "video_keys", "fps", "action_dim", "state_dim", "stats")


def episode_key(episode_id, level: str) -> str:
    if isinstance(episode_id, int) and not isinstance(episode_id, bool):
        return f"ep{episode_id:06d}_{level}"
    return f"ep{episode_id}_{level}"


def most_common(ids: list[int]) -> int:
    """The most frequent id; ties go to the smaller id."""
    c = Counter(ids)
    return min(c, key=lambda i: (-c[i], i))


@dataclass(frozen=True)
class EpisodePlan:
    key: str
    events: tuple[str, ...]  # event sample keys, in time order
    meta: bytes  # the json member
    clusters: tuple[int, int]
    length: int


def _spans(evs: list[EventMeta]) -> str:
    return ", ".join(f"{ev.key} [{ev.start}, {ev.end})" for ev in evs)


def _plan(events: list[EventMeta], gaps: str) -> tuple[list[EpisodePlan], list[str]]:
    """The episodes to write and the keys of those left out for gaps (``gaps="skip"``)."""
    levels = sorted({str(ev.meta["level"]) for ev in events})
    if len(levels) != 1:
        raise DataToolsError(f"the event shards hold events of levels {levels}; build-episodes "
                             "joins the events of one caption level (build-shards --level)")
    by_episode: dict = defaultdict(list)
    for ev in events:
        by_episode[ev.meta["episode_id"]].append(ev)
    plans, skipped = [], []
    for episode_id in sorted(by_episode, key=lambda e: (str(type(e)), e)):
        evs = sorted(by_episode[episode_id], key=lambda e: (e.start, int(e.meta["event_index"])))
        key = episode_key(episode_id, levels[0])
        bad = next(((a, b) for a, b in zip(evs, evs[1:]) if a.end != b.start), None)
        if bad is not None:
            a, b = bad
            if gaps == "skip":
                skipped.append(key)
                continue
            what = "a gap" if a.end < b.start else "an overlap"
            raise DataToolsError(
                f"episode {episode_id}: {what} between events {_spans([a, b])}; the events of one "
                "level must tile the episode (pass --gaps skip to leave such episodes out)")
        first, last = evs[0], evs[-1]
        task = first.meta.get("task", "")
        meta = {
            "episode_id": episode_id, "level": levels[0], "task": task, "caption": task,
            "fps": first.meta.get("fps"), "start": first.start, "end": last.end,
            "length": last.end - first.start, "views": first.meta.get("views", []),
            "vl_cluster": most_common([int(e.meta.get("vl_cluster", 0)) for e in evs]),
            "action_cluster": most_common([int(e.meta.get("action_cluster", 0)) for e in evs]),
            "events": [{"caption": e.meta["caption"], "start": e.start - first.start,
                        "end": e.end - first.start, "event_index": e.meta["event_index"],
                        "level": e.meta["level"],
                        **({"reasoning": e.meta["reasoning"]}
                           if isinstance(e.meta.get("reasoning"), str) else {})}
                       for e in evs],
        }
        plans.append(EpisodePlan(key, tuple(e.key for e in evs),
                                 json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
                                 (meta["vl_cluster"], meta["action_cluster"]), meta["length"]))
    return plans, skipped


@dataclass
class SpillEvents:
    """One source shard's work: spill the members of its events that episodes need."""
    src: str
    shard: str
    keys: frozenset[str]
    wanted: tuple[str, ...]
    spill: str


def spill_events(task: SpillEvents) -> int:
    path = Path(task.src) / task.shard
    seen = set()
    for key, members in iter_tar(path, task.wanted):
        if key in task.keys and key not in seen:
            seen.add(key)
            Path(task.spill, f"{key}.event.pkl").write_bytes(pickle.dumps(members, protocol=4))
    if seen != task.keys:
        lost = sorted(task.keys - seen)
        raise DataToolsError(f"{path}: samples {lost[:3]} vanished between the two passes "
                             "(was the folder changed while building?)")
    return len(seen)


@dataclass
class JoinEpisodes:
    """A run of episodes to join from their spilled events."""
    src: str
    episodes: list[EpisodePlan]
    shard_of: dict[str, str]  # event key -> source shard name (for error messages)
    text: bool  # the events carry caption_states / task_states
    spill: str


def _event_arrays(task: JoinEpisodes, key: str, start: int, end: int) -> dict[str, np.ndarray]:
    members = pickle.loads(Path(task.spill, f"{key}.event.pkl").read_bytes())
    where = f"{Path(task.src) / task.shard_of[key]}: sample {key}"
    why = "episode samples join the events' steps"
    out = {"actions.npy": member_array(members, "actions.npy", where, np.float32, 2, why),
           "states.npy": member_array(members, "states.npy", where, np.float32, 2, why),
           "frames.npy": member_array(members, "frames.npy", where, np.uint8, 5, why)}
    for name, arr in out.items():
        if len(arr) != end - start:
            raise DataToolsError(f"{where}.{name}: {len(arr)} steps, but the span in its json "
                                 f"[{start}, {end}) has {end - start}")
    if task.text:
        why = "index.json records text states for every sample (embed-captions)"
        for name in TEXT_MEMBERS:
            out[name] = member_array(members, name, where, np.float16, 2, why)
    return out


def join_episodes(task: JoinEpisodes) -> int:
    for ep in task.episodes:
        meta = json.loads(ep.meta)
        parts = [_event_arrays(task, k, e["start"], e["end"]) for k, e in zip(ep.events, meta["events"])]
        for name in ("actions.npy", "states.npy", "frames.npy"):
            shapes = {p[name].shape[1:] for p in parts}
            if len(shapes) != 1:
                raise DataToolsError(f"episode {meta['episode_id']}: the events' {name} differ in "
                                     f"shape {sorted(map(list, shapes))}; cannot join them")
        states = np.concatenate([p["states.npy"] for p in parts])
        sample = {"json": ep.meta,
                  "actions.npy": npy_bytes(np.concatenate([p["actions.npy"] for p in parts])),
                  "state.npy": npy_bytes(states[0]),
                  "states.npy": npy_bytes(states),
                  "frames.npy": npy_bytes(np.concatenate([p["frames.npy"] for p in parts]))}
        if task.text:
            caps = [p["caption_states.npy"] for p in parts]
            width = {c.shape[1] for c in caps} | {parts[0]["task_states.npy"].shape[1]}
            if len(width) != 1:
                raise DataToolsError(f"episode {meta['episode_id']}: text states of widths "
                                     f"{sorted(width)}; were the shards embedded by two models?")
            padded = np.zeros((len(caps), max(len(c) for c in caps), caps[0].shape[1]), np.float16)
            for i, c in enumerate(caps):
                padded[i, :len(c)] = c
            sample[EVENT_STATES] = npy_bytes(padded)
            sample[EVENT_STATES_LEN] = npy_bytes(np.array([len(c) for c in caps], np.int32))
            sample["task_states.npy"] = npy_bytes(parts[0]["task_states.npy"])
        Path(task.spill, f"{ep.key}.pkl").write_bytes(pickle.dumps(sample, protocol=4))
        for k in ep.events:
            Path(task.spill, f"{k}.event.pkl").unlink()
    return len(task.episodes)


def _text_spec(index: dict) -> dict | None:
    """index.json's ``text_states`` for the episodes, or None when the events carry none."""
    spec = index.get("text_states")
    if not (isinstance(spec, dict) and spec.get("complete")):
        return None
    return {**{k: v for k, v in spec.items() if k != "lengths"},
            "members": {"events": EVENT_STATES, "task": "task_states.npy"},
            "event_lengths": {"member": EVENT_STATES_LEN, "dtype": "int32",
                              "rule": "real rows of each event's states in event_states.npy"},
            "carried_from": "the event shards' caption_states.npy / task_states.npy",
            "complete": True}


def build_episodes(src: Path, out: Path, samples_per_shard: int = 64, seed: int = 0,
                   workers: int = 1, gaps: str = "error", progress: bool = True,
                   force: bool = False) -> dict:
    """Write episode shards for the event shards at ``src`` into ``out`` (see module doc).

    Returns the content of ``index.json`` plus ``"reused"`` (True when ``out`` was already
    built from the same input and flags). Raises DataToolsError subclasses on bad input.
    """
    if samples_per_shard < 1 or workers < 1:
        raise DataToolsError(f"--samples-per-shard ({samples_per_shard}) and --workers "
                             f"({workers}) must be positive")
    if gaps not in GAP_POLICIES:
        raise DataToolsError(f"--gaps must be one of {', '.join(GAP_POLICIES)}, got {gaps!r}")
    src, out = Path(src), Path(out)
    params = {"format": FORMAT_VERSION, "samples_per_shard": samples_per_shard, "seed": seed,
              "gaps": gaps}
    build = start_build(src, out, KIND, "build-episodes", params, force, progress)
    if build.done is not None:
        return build.done
    index, key, events = build.index, build.key, build.events
    plans, skipped = _plan(events, gaps)
    if not plans:
        raise DataToolsError(f"{src}: every episode has a gap or overlap between its events; "
                             "nothing to write")
    text = _text_spec(index)
    empty_file = None
    if text is not None:
        empty_file = src / str((text.get("empty") or {}).get("file", "empty_text_states.npy"))
        if not empty_file.is_file():
            raise DataToolsError(f"{empty_file} not found: {src / INDEX_FILE} records text states")
    wanted = ARRAYS + (TEXT_MEMBERS if text is not None else ())
    shard_of = {ev.key: ev.shard for ev in events}
    needed = {k for p in plans for k in p.events}
    clusters = {p.key: p.clusters for p in plans}
    lengths = np.array([p.length for p in plans])
    names, parts = shard_plan([p.key for p in plans], seed, samples_per_shard)

    with staged(out) as staging:
        spill = str(staging / ".spill")
        by_shard: dict[str, set] = defaultdict(set)
        for k in needed:
            by_shard[shard_of[k]].add(k)
        tasks = [SpillEvents(str(src), s["name"], frozenset(by_shard[s["name"]]), wanted, spill)
                 for s in index["shards"] if by_shard.get(s["name"])]
        spilled = sum(run_ordered(spill_events, tasks, workers, lambda t: str(src / t.shard),
                                  "read events", progress))
        if spilled != len(needed):
            raise DataToolsError(f"{src}: read {spilled} events, planned {len(needed)}")
        joins = [JoinEpisodes(str(src), c, shard_of, text is not None, spill)
                 for c in chunks(plans, workers)]
        sum(run_ordered(join_episodes, joins, workers,
                        lambda t: f"episodes {t.episodes[0].key}..{t.episodes[-1].key}",
                        "join episodes", progress))
        shards = write_shards(staging, names, parts, clusters, workers, progress)
        result = {
            "format_version": FORMAT_VERSION, "kind": KIND, "seed": seed,
            "level": events[0].meta["level"],
            **{k: index[k] for k in COPIED if k in index},
            "source": str(src.resolve()), "events": len(needed), "episodes": len(plans),
            "skipped_episodes": skipped, "gaps": gaps,
            "total_samples": len(plans), "samples_per_shard": samples_per_shard,
            "episode_length": {"min": int(lengths.min()), "max": int(lengths.max()),
                               "mean": round(float(lengths.mean()), 3)},
            "shards": shards,
            "vl_cluster_counts": counts(v for v, _ in clusters.values()),
            "action_cluster_counts": counts(a for _, a in clusters.values()),
            "build": {"key": key, "source": str(src.resolve()),
                      "source_key": (index.get("build") or {}).get("key")},
        }
        if text is not None:
            result["text_states"] = text
            shutil.copyfile(empty_file, staging / empty_file.name)
        (staging / INDEX_FILE).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return {**result, "reused": False}
