"""Add members to every sample of a shard folder in place, shard by shard, resumably.

``encode-latents`` and ``embed-captions`` run a frozen model over the samples of finished shards
and add its outputs as new members of each sample. The engine here is shared by both:

* **Streaming.** One shard at a time per worker: its samples are read, the new members computed
  and a new tar written; memory is one shard plus the model.
* **Crash-safe.** The new tar goes to ``shard-XXXXXX.tar.partial`` and is renamed over the shard
  only when complete; then ``index.json`` is rewritten (temporary file + rename) with the
  shard's new ``bytes`` and ``sha256`` and a flag ``<step>: true`` in its entry, so the checks of
  the training loader (``data.verify``: size, sample count, sha256) keep passing.
* **Resumable.** A re-run skips every shard whose entry is flagged and whose size still
  matches. A crash between the rename and the index update leaves a shard whose sha256 no
  longer matches its entry and that holds the members for every sample: the re-run (same
  model, no ``--force``) adopts it, recording its size and sha256.
* **One model per folder.** ``index.json[<step>]`` records what the members are, with a
  fingerprint of the model folders; a re-run with another model fails unless ``--force``, which
  recomputes every shard.

Original members are kept byte for byte, in their order; the new members follow them in each
sample (a member of the same name, from an earlier ``--force`` run, is replaced).
"""

from __future__ import annotations

import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .buildplan import sha256_file
from .errors import DataToolsError
from .parallel import run_ordered
from .shardread import read_index
from .tario import DeterministicTarWriter

INDEX_FILE = "index.json"
PARTIAL = ".partial"

# fn(samples, shard_path) -> one dict of new members (name -> bytes) per sample, in order;
# samples are (key, {member name: bytes}) in tar order. Must be picklable (worker processes).
Compute = Callable[[list[tuple[str, dict[str, bytes]]], Path], list[dict[str, bytes]]]


@dataclass(frozen=True)
class ShardJob:
    folder: str
    name: str
    samples: int
    members: tuple[str, ...]
    compute: Compute


def write_index(folder: Path, index: dict) -> None:
    tmp = Path(folder) / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, Path(folder) / INDEX_FILE)


def read_samples(path: Path) -> list[tuple[str, dict[str, bytes]]]:
    """Every sample of a tar, members in tar order; DataToolsError naming the file."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError) as exc:
        raise DataToolsError(f"{path}: cannot read shard ({exc})") from None
    return samples


def has_members(path: Path, members: tuple[str, ...], samples: int) -> bool:
    """Whether every one of the ``samples`` samples of the tar holds all ``members``."""
    found: dict[str, set[str]] = {}
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                found.setdefault(key, set()).add(ext)
    except (tarfile.TarError, OSError):
        return False
    return len(found) == samples and all(set(members) <= exts for exts in found.values())


def process_shard(job: ShardJob) -> tuple[str, int, str]:
    """Write the shard with the new members beside it, rename it over the original.
    Returns (name, bytes, sha256)."""
    path = Path(job.folder) / job.name
    samples = read_samples(path)
    if len(samples) != job.samples:
        raise DataToolsError(f"{path}: {len(samples)} samples, index.json says {job.samples}")
    added = job.compute(samples, path)
    tmp = path.with_name(path.name + PARTIAL)
    try:
        with open(tmp, "wb") as fh:
            writer = DeterministicTarWriter(fh)
            for (key, members), new in zip(samples, added, strict=True):
                if set(new) != set(job.members):
                    raise DataToolsError(f"{path}: sample {key}: computed members {sorted(new)} "
                                         f"instead of {sorted(job.members)}")
                kept = {k: v for k, v in members.items() if k not in new}
                writer.write_sample(key, {**kept, **new})
            writer.close()
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return job.name, path.stat().st_size, sha256_file(path)


def _write_side(folder: Path, side: dict[str, bytes]) -> None:
    for name, data in side.items():
        tmp = folder / f"{name}.tmp-{os.getpid()}"  # several ranks may write the same bytes at once
        tmp.write_bytes(data)
        os.replace(tmp, folder / name)


def augment_shards(folder: Path, step: str, spec: dict, members: tuple[str, ...],
                   compute: Compute, workers: int = 1, progress: bool = True,
                   force: bool = False, identity: tuple[str, ...] = ("fingerprint",),
                   side_files: dict[str, bytes] | None = None, rank: int = 0, world: int = 1) -> dict:
    """Add ``members`` (computed by ``compute``) to every sample of the shards in ``folder``.

    ``spec`` becomes ``index.json[step]`` (plus ``complete``); ``identity`` names the spec keys
    that must match an earlier run's for its shards to be kept. ``side_files`` (name -> bytes)
    are written beside index.json once the run is known to go ahead. Returns
    ``{"shards": n, "done": computed now, "skipped": already done}``. With ``world > 1`` only
    this rank's shards are done and recorded in its ledger (``ranks.py``); index.json is left
    to ``--finalize``.
    """
    folder = Path(folder)
    index = read_index(folder)
    if world > 1:
        return _augment_rank(folder, index, step, spec, members, compute, workers, progress, force,
                             identity, side_files or {}, rank, world)
    shards = index.get("shards") or []
    if not shards:
        raise DataToolsError(f"{folder / INDEX_FILE}: lists no shards")
    for s in shards:
        if not (folder / s["name"]).is_file():
            raise DataToolsError(f"{folder / s['name']}: listed in index.json but missing")
        (folder / (s["name"] + PARTIAL)).unlink(missing_ok=True)  # left by a crash
    old = index.get(step) or {}
    same = all(old.get(k) == spec.get(k) for k in identity)
    flagged = [s["name"] for s in shards if s.get(step)]
    if flagged and not same and not force:
        raise DataToolsError(
            f"{folder / INDEX_FILE}: {len(flagged)} shard(s) already carry {step} from another "
            f"model ({old.get('source', '?')}); pass --force to recompute every shard")
    if force or not same:
        for s in shards:
            s.pop(step, None)

    todo, skipped, adopted = [], 0, False
    for s in shards:
        path = folder / s["name"]
        if s.get(step) and path.stat().st_size == s.get("bytes"):
            skipped += 1
        elif not force and same and (sha := sha256_file(path)) != s.get("sha256") \
                and has_members(path, members, s["samples"]):
            # Replaced after index.json was last written, and holding the members: finished by
            # a run of this model that stopped before it updated the index.
            s.update(bytes=path.stat().st_size, sha256=sha)
            s[step] = True
            skipped, adopted = skipped + 1, True
        else:
            s.pop(step, None)
            todo.append(ShardJob(str(folder), s["name"], s["samples"], members, compute))
    side = {name: data for name, data in (side_files or {}).items()
            if not (folder / name).is_file() or (folder / name).read_bytes() != data}
    if not todo and not adopted and not side and old == {**spec, "complete": True}:
        return {"shards": len(shards), "done": 0, "skipped": skipped}  # nothing to do
    _write_side(folder, side)
    index[step] = {**spec, "complete": False}
    write_index(folder, index)
    by_name = {s["name"]: s for s in shards}
    for name, size, sha in run_ordered(process_shard, todo, workers, lambda j: str(
            folder / j.name), f"{step} ({skipped} shard(s) already done)", progress):
        by_name[name].update(bytes=size, sha256=sha)
        by_name[name][step] = True
        write_index(folder, index)
    index[step]["complete"] = True
    write_index(folder, index)
    return {"shards": len(shards), "done": len(todo), "skipped": skipped}


def _augment_rank(folder: Path, index: dict, step: str, spec: dict, members: tuple[str, ...],
                  compute: Compute, workers: int, progress: bool, force: bool,
                  identity: tuple[str, ...], side_files: dict[str, bytes], rank: int, world: int) -> dict:
    """This rank's part of :func:`augment_shards` (``ranks.py``): its shards, its ledger."""
    from .ranks import Ledger, owned

    shards = index.get("shards") or []
    if not shards:
        raise DataToolsError(f"{folder / INDEX_FILE}: lists no shards")
    mine = owned(shards, rank, world)
    old = index.get(step) or {}
    same = all(old.get(k) == spec.get(k) for k in identity)
    flagged = [s["name"] for s in shards if s.get(step)]
    if flagged and not same and not force:
        raise DataToolsError(
            f"{folder / INDEX_FILE}: {len(flagged)} shard(s) already carry {step} from another "
            f"model ({old.get('source', '?')}); pass --force to recompute every shard")
    for s in mine:
        if not (folder / s["name"]).is_file():
            raise DataToolsError(f"{folder / s['name']}: listed in index.json but missing")
        (folder / (s["name"] + PARTIAL)).unlink(missing_ok=True)  # left by a crash
    ledger = Ledger(folder, step)
    ledger.start(rank, world, spec, identity, force)
    records = {} if force else ledger.records()
    todo, skipped = [], 0
    for s in mine:
        path = folder / s["name"]
        size = path.stat().st_size
        recorded = [rec for _, rec in records.get(s["name"], []) if rec["bytes"] == size]
        if recorded or (not force and same and s.get(step) and size == s.get("bytes")):
            skipped += 1
        elif not force and (same or not old) and (sha := sha256_file(path)) != s.get("sha256") \
                and has_members(path, members, s["samples"]):
            # replaced by this rank's earlier run (the ledger's spec is this model's: checked by
            # ledger.start), which stopped before recording it
            ledger.record(rank, world, s["name"], size, sha)
            skipped += 1
        else:
            todo.append(ShardJob(str(folder), s["name"], s["samples"], members, compute))
    _write_side(folder, {name: data for name, data in side_files.items()
                         if not (folder / name).is_file() or (folder / name).read_bytes() != data})
    for name, size, sha in run_ordered(process_shard, todo, workers, lambda j: str(folder / j.name),
                                       f"{step} rank {rank}/{world} ({skipped} shard(s) already done)", progress):
        ledger.record(rank, world, name, size, sha)
    return {"shards": len(mine), "done": len(todo), "skipped": skipped, "rank": rank, "world": world}
