"""What the verbs that derive a new shard folder from event shards share.

``build-conditioner`` (observations inside events) and ``build-episodes`` (whole episodes) both
read an event-shard folder written by ``build-shards``: its ``index.json``, every sample's json
member (pass 1), then the arrays they need (pass 2, one source shard per task). Both write
their samples through a scratch spill folder into shards of a seeded order, inside a staging
folder that is renamed over ``--out`` only when complete, and both record a build key so that a
re-run with the same input and flags does nothing.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from .buildplan import INDEX_FILE, staging_dir, up_to_date
from .errors import DataToolsError, OutputExistsError
from .parallel import run_ordered
from .shardread import iter_samples, npy, read_index, sample_meta
from .shards import SHARD_NAME, looks_like_shard_folder
from .shardwork import ShardTask, write_shard

EVENT_FIELDS = ("episode_id", "event_index", "level", "caption", "start", "end")


def shard_kind(index: dict) -> str:
    """``event``, ``conditioner`` or ``episode`` (an index.json without ``kind`` is an
    event-shard folder)."""
    return str(index.get("kind", "event"))


@dataclass(frozen=True)
class EventMeta:
    key: str
    shard: str
    meta: dict

    @property
    def start(self) -> int:
        return int(self.meta["start"])

    @property
    def end(self) -> int:
        return int(self.meta["end"])


SOURCE_FOLDERS = {"event": "an event-shard folder (index.json + shard-*.tar, from build-shards)",
                  "episode": "an episode-shard folder (python -m data_tools build-episodes)"}


def open_source(src: Path, verb: str, kind: str = "event") -> dict:
    """The index.json of the ``kind``-shard folder ``src`` (``event`` or ``episode``);
    DataToolsError unless it is one whose shards are all present."""
    src = Path(src)
    if not src.is_dir():
        raise DataToolsError(f"{src} is not a folder: the input of {verb} must be {SOURCE_FOLDERS[kind]}")
    index = read_index(src)
    if shard_kind(index) != kind:
        raise DataToolsError(f"{src / INDEX_FILE}: kind {shard_kind(index)!r}; {verb} reads {kind} shards, "
                             f"{SOURCE_FOLDERS[kind]}")
    if "pruning" in index:  # derived samples index steps as t - start: every step of an event is needed
        raise DataToolsError(f"{src / INDEX_FILE}: built with --prune-static (steps dropped, the time axis "
                             f"no longer uniform); {verb} needs event shards built without pruning")
    if not index.get("shards"):
        raise DataToolsError(f"{src / INDEX_FILE}: lists no shards")
    for s in index["shards"]:
        if not (src / s["name"]).is_file():
            raise DataToolsError(f"{src / s['name']}: listed in index.json but missing")
    return index


def read_events(src: Path, progress: bool) -> list[EventMeta]:
    """Pass 1: every sample's json, checked for the fields an event carries."""
    events = []
    total = read_index(src).get("total_samples")
    for shard, key, members in tqdm(iter_samples(src, ("json",)), total=total, unit="event",
                                    desc="read events", disable=not progress):
        where = f"{src / shard}: sample {key}"
        meta = sample_meta(members, where)
        missing = [f for f in EVENT_FIELDS if f not in meta]
        if missing:
            raise DataToolsError(f"{where}.json: no {', '.join(map(repr, missing))}; is {src} "
                                 "an event-shard folder written by build-shards?")
        ev = EventMeta(key, shard, meta)
        if not isinstance(meta["caption"], str):
            raise DataToolsError(f"{where}.json: 'caption' must be text")
        if not (isinstance(meta["start"], int) and isinstance(meta["end"], int)
                and 0 <= ev.start < ev.end):
            raise DataToolsError(f"{where}.json: needs integer 0 <= start < end, found "
                                 f"start={meta['start']!r}, end={meta['end']!r}")
        events.append(ev)
    if not events:
        raise DataToolsError(f"{src}: the shards hold no samples")
    return events


def member_array(members: dict[str, bytes], name: str, where: str, dtype, ndim: int,
                 why: str) -> np.ndarray:
    """One ``.npy`` member, checked for dtype and rank; DataToolsError naming sample and key
    (``why`` says what needs the member when it is missing)."""
    if name not in members:
        raise DataToolsError(f"{where} has no {name} member; {why}")
    try:
        arr = npy(members[name])
    except (ValueError, EOFError, OSError) as exc:
        raise DataToolsError(f"{where}.{name}: cannot read ({exc})") from None
    if arr.dtype != dtype or arr.ndim != ndim:
        raise DataToolsError(f"{where}.{name}: expected {np.dtype(dtype).name} with {ndim} dims, "
                             f"found {arr.dtype} {list(arr.shape)}")
    return arr


def counts(ids) -> dict[str, int]:
    """Cluster id -> count, keys as strings (JSON object keys) in numeric order."""
    c = Counter(int(i) for i in ids)
    return {str(k): c[k] for k in sorted(c)}


def check_output(out: Path, kind: str, verb: str) -> None:
    """OutputExistsError unless ``out`` is absent, empty, or a folder of ``kind`` shards."""
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another --out")
    if not any(out.iterdir()):
        return
    found = None
    if looks_like_shard_folder(out):
        try:
            found = shard_kind(json.loads((out / INDEX_FILE).read_text(encoding="utf-8")))
        except (OSError, ValueError):
            found = None
    if found != kind:
        raise OutputExistsError(f"{out} exists, is not empty and is not a {kind}-shard folder "
                                f"({verb} output); refusing to replace it (choose another --out "
                                "or remove it yourself)")


def build_key(params: dict, index: dict) -> str:
    """sha256 of the flags and of the source folder's shards (names, sha256, counts)."""
    source = {"build": (index.get("build") or {}).get("key"),
              "shards": [(s.get("name"), s.get("sha256"), s.get("samples"))
                         for s in index.get("shards", [])]}
    blob = json.dumps({"params": params, "source": source}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class DerivedBuild:
    """The start of a derived build: the source's index, the build key, and either the events
    to derive from or (``done``) the result of an identical earlier build."""

    index: dict
    key: str
    events: list[EventMeta] | None = None
    done: dict | None = None


def start_build(src: Path, out: Path, kind: str, verb: str, params: dict, force: bool, progress: bool
                ) -> DerivedBuild:
    """Check the source and the output folder, compute the build key, reuse an up-to-date
    output (unless ``force``), else read the source's events (keys must be unique)."""
    index = open_source(src, f"{verb} ({'--src' if kind == 'conditioner' else '--shards'})")
    check_output(out, kind, verb)
    key = build_key(params, index)
    if not force and (done := up_to_date(out, key)) is not None:
        return DerivedBuild(index, key, done={**done, "reused": True})
    events = read_events(src, progress)
    dup = [k for k, n in Counter(ev.key for ev in events).items() if n > 1]
    if dup:
        raise DataToolsError(f"{src}: sample key {dup[0]} appears more than once")
    return DerivedBuild(index, key, events)


def shard_plan(keys: list[str], seed: int, samples_per_shard: int
               ) -> tuple[list[str], list[list[str]]]:
    """(shard names, keys per shard): the keys in a seeded order, cut into shards."""
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    parts = [order[i:i + samples_per_shard] for i in range(0, len(order), samples_per_shard)]
    return [SHARD_NAME.format(s) for s in range(len(parts))], parts


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh staging folder beside ``out`` (with an empty ``.spill`` inside); renamed over
    ``out`` when the block ends normally, removed when it raises."""
    staging = staging_dir(out)
    if staging.exists():
        shutil.rmtree(staging)
    (staging / ".spill").mkdir(parents=True)
    try:
        yield staging
        shutil.rmtree(staging / ".spill", ignore_errors=True)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        print(f"note: removed the partial output {staging}; {out} was left unchanged",
              file=sys.stderr)
        raise


def write_shards(staging: Path, names: list[str], parts: list[list[str]],
                 clusters: dict[str, tuple[int, int]], workers: int, progress: bool) -> list[dict]:
    """Write the shards from the spilled samples; their index.json entries (samples, bytes,
    sha256, per-shard cluster counts)."""
    spill = staging / ".spill"
    tasks = [ShardTask(n, p, str(spill), str(staging)) for n, p in zip(names, parts)]
    sha = dict(run_ordered(write_shard, tasks, workers, lambda t: f"shard {t.name}",
                           "write shards", progress))
    return [{"name": n, "samples": len(p), "bytes": (staging / n).stat().st_size,
             "sha256": sha[n], "vl_cluster": counts(clusters[k][0] for k in p),
             "action_cluster": counts(clusters[k][1] for k in p)}
            for n, p in zip(names, parts)]
