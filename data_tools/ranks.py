"""``encode-latents`` / ``embed-captions`` split over ranks (nodes, Slurm tasks), then finalised.

* **Split.** Shard i of index.json (in its order) belongs to rank ``i % world``: deterministic,
  the same for every rank without talking to the others, and balanced to one shard.
* **Rank and world** come from ``--rank/--world``, else torchrun's ``RANK``/``WORLD_SIZE``, else
  Slurm's ``SLURM_PROCID``/``SLURM_NTASKS`` (one task per node under ``srun``), else one process.
* **No shared writes.** Ranks never write index.json (two nodes rewriting one file on a shared
  file system lose each other's updates). Each rank rewrites only its own shards (temporary file +
  rename, as in one process) and records each finished one in its own ledger folder,
  ``.<step>.ranks/rank-R-of-W/`` beside index.json: ``spec.json`` (what the members are, with the
  model's fingerprint) and one ``<shard>.json`` (bytes, sha256) per shard. A rank that is run
  again skips the shards any rank has recorded (resumable, idempotent); one that crashed between
  a shard's rename and its record adopts the shard as the one-process run does.
* **Finalise** (``--finalize``, once every rank is done): checks that every shard was done exactly
  once (one record, or flagged in index.json by an earlier run of the same model) and still has
  the size recorded, that every rank recorded the same spec, then writes index.json as the one
  process would have (the same bytes) and removes the ledger. A shard not done is named with the
  rank that owns it, to be run again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import DataToolsError

INDEX_FILE = "index.json"
_ENV = (("RANK", "WORLD_SIZE", "torchrun"), ("SLURM_PROCID", "SLURM_NTASKS", "Slurm"))


def rank_and_world(rank: int | None, world: int | None, environ=os.environ) -> tuple[int, int, str]:
    """(rank, world, where they came from)."""
    if rank is not None or world is not None:
        if rank is None or world is None:
            raise DataToolsError("--rank and --world go together")
        where = "--rank/--world"
    else:
        for r, w, name in _ENV:
            if r in environ and w in environ:
                try:
                    rank, world = int(environ[r]), int(environ[w])
                except ValueError:
                    raise DataToolsError(f"{r}={environ[r]!r} / {w}={environ[w]!r} are not integers") from None
                where = f"{name} ({r}/{w})"
                break
        else:
            return 0, 1, "one process"
    if world < 1 or not 0 <= rank < world:
        raise DataToolsError(f"rank {rank} of world {world} (from {where}): need 0 <= rank < world")
    return rank, world, where


def owned(shards: list[dict], rank: int, world: int) -> list[dict]:
    return [s for i, s in enumerate(shards) if i % world == rank]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class Ledger:
    """The per-rank records of one step of one shard folder."""

    def __init__(self, folder: Path, step: str) -> None:
        self.folder, self.step = Path(folder), step
        self.root = self.folder / f".{step}.ranks"

    def own(self, rank: int, world: int) -> Path:
        return self.root / f"rank-{rank:05d}-of-{world:05d}"

    def start(self, rank: int, world: int, spec: dict, identity: tuple[str, ...], force: bool) -> None:
        """Record this rank's spec; a spec of another model fails unless ``force`` (which drops
        every record of that model, as --force recomputes every shard)."""
        self.root.mkdir(exist_ok=True)
        for other in self.root.glob("rank-*"):
            old = _read(other / "spec.json")
            if old is not None and any(old.get(k) != spec.get(k) for k in identity):
                if not force:
                    raise DataToolsError(
                        f"{other}: shards were done with another model ({old.get('source', '?')}); pass "
                        "--force to recompute every shard")
                shutil.rmtree(other, ignore_errors=True)
        if force:
            shutil.rmtree(self.own(rank, world), ignore_errors=True)
        own = self.own(rank, world)
        own.mkdir(parents=True, exist_ok=True)
        _write_json(own / "spec.json", spec)

    def records(self) -> dict[str, list[tuple[str, dict]]]:
        """shard name -> [(rank folder name, record)]."""
        out: dict[str, list[tuple[str, dict]]] = {}
        if not self.root.is_dir():
            return out
        for rank_dir in sorted(self.root.glob("rank-*")):
            for path in sorted(rank_dir.glob("*.json")):
                if path.name == "spec.json":
                    continue
                rec = _read(path)
                if rec is not None:
                    out.setdefault(rec["name"], []).append((rank_dir.name, rec))
        return out

    def record(self, rank: int, world: int, name: str, size: int, sha: str) -> None:
        _write_json(self.own(rank, world) / f"{name}.json",
                    {"name": name, "bytes": size, "sha256": sha, "rank": rank, "world": world})

    def specs(self) -> dict[str, dict]:
        return {d.name: spec for d in sorted(self.root.glob("rank-*"))
                if (spec := _read(d / "spec.json")) is not None}


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise DataToolsError(f"{path}: cannot read ({exc})") from None


def finalize(folder: Path, step: str, identity: tuple[str, ...]) -> dict:
    """Check that every shard of ``folder`` was done exactly once for ``step`` and write
    index.json as one process would have; returns ``{"shards": n, "recorded": m}``."""
    from .augment import write_index
    from .shardread import read_index

    folder = Path(folder)
    index = read_index(folder)
    shards = index.get("shards") or []
    ledger = Ledger(folder, step)
    specs = ledger.specs()
    old = index.get(step) or {}
    if not specs:
        if old.get("complete"):
            return {"shards": len(shards), "recorded": 0}  # finalised before: nothing to do
        raise DataToolsError(f"{ledger.root}: no rank has recorded any work for {step}; run the ranks "
                             "first (--rank/--world, or under srun/torchrun), then --finalize")
    spec = next(iter(specs.values()))
    differ = [name for name, s in specs.items() if s != spec]
    if differ:
        raise DataToolsError(f"{ledger.root}: ranks {', '.join(differ)} recorded another spec than "
                             f"{next(iter(specs))} (another model or setting); rerun them with --force")
    same = all(old.get(k) == spec.get(k) for k in identity)
    records = ledger.records()
    world = max((rec["world"] for recs in records.values() for _, rec in recs), default=1)
    problems, recorded = [], 0
    for i, s in enumerate(shards):
        path = folder / s["name"]
        found = records.get(s["name"], [])
        size = path.stat().st_size if path.is_file() else None
        if len(found) > 1:
            problems.append(f"{s['name']}: done more than once ({', '.join(r for r, _ in found)})")
        elif found:
            rec = found[0][1]
            if size != rec["bytes"]:
                problems.append(f"{s['name']}: {size} bytes on disk, {found[0][0]} recorded {rec['bytes']}")
        elif not (same and s.get(step) and size == s.get("bytes")):
            problems.append(f"{s['name']}: not done (rank {i % world} of {world} owns it: run it again)")
    if problems:
        raise DataToolsError(f"{folder / INDEX_FILE}: cannot finalise {step}:\n  " + "\n  ".join(problems))
    if not same:
        for s in shards:
            s.pop(step, None)
    index[step] = {**spec, "complete": False}  # as one process leaves it while working
    for s in shards:
        if s["name"] in records:
            rec = records[s["name"]][0][1]
            s.pop(step, None)
            s.update(bytes=rec["bytes"], sha256=rec["sha256"])
            s[step] = True
            recorded += 1
    index[step]["complete"] = True
    write_index(folder, index)
    shutil.rmtree(ledger.root)
    return {"shards": len(shards), "recorded": recorded}
