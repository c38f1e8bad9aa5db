"""Build keys, the staging folder and the done-shard manifest that make build-shards resumable.

A *build key* is a sha256 over everything the shard bytes depend on: the parameters, the
resolved events, the cluster and sync files, and the dataset (full content of its ``meta/``
files, path and size of every data and video file). Hashing video content would mean reading
terabytes just to find out that nothing changed, so a file rewritten with the same size and
the same metadata goes unnoticed: ``--force`` rebuilds everything in that case.

Shards are written into ``.<out>.partial`` beside ``--out``; ``build.json`` there lists each
finished shard with its sha256. A re-run with the same build key keeps the shards whose sha256
still matches (from that folder after an interrupted run, or hard-linked from a finished
``--out`` whose ``index.json`` carries the same key) and writes only the rest. At the end the
folder is renamed over ``--out``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from .events import Event

MANIFEST = "build.json"
INDEX_FILE = "index.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _sha_json(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def dataset_fingerprint(root: Path, meta_files: list[Path]) -> str:
    root = Path(root)
    meta = {p.relative_to(root).as_posix(): sha256_file(p) for p in meta_files}
    sizes = {}
    for sub in ("data", "videos"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                sizes[p.relative_to(root).as_posix()] = p.stat().st_size
    return _sha_json({"meta": meta, "sizes": sizes})


def build_key(params: dict, events: list[Event], dataset: str,
              extra_files: dict[str, Path | None]) -> str:
    files = {name: (sha256_file(p) if p is not None else None) for name, p in extra_files.items()}
    evs = sorted(json.dumps(asdict(e), sort_keys=True) for e in events)
    return _sha_json({"params": params, "events": _sha_json(evs), "dataset": dataset,
                      "files": files})


def staging_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def _write_manifest(staging: Path, key: str, done: dict[str, str]) -> None:
    tmp = staging / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"build_key": key, "done": dict(sorted(done.items()))}, indent=1))
    os.replace(tmp, staging / MANIFEST)


class Staging:
    """The partial-output folder of one build and the shards already finished in it."""

    def __init__(self, out: Path, key: str, shard_names: list[str], force: bool):
        self.out, self.key = Path(out), key
        self.path = staging_dir(self.out)
        self.done: dict[str, str] = {}
        self.reused = 0
        wanted = set(shard_names)
        if self.path.exists():
            manifest = _read_json(self.path / MANIFEST)
            if force or manifest.get("build_key") != key:
                shutil.rmtree(self.path)
            else:
                for name, sha in manifest.get("done", {}).items():
                    f = self.path / name
                    if name in wanted and f.is_file() and sha256_file(f) == sha:
                        self.done[name] = sha
                for f in self.path.iterdir():  # half-written shards, old spill, old index
                    if f.name not in self.done and f.name != MANIFEST:
                        shutil.rmtree(f) if f.is_dir() else f.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        index = _read_json(self.out / INDEX_FILE) if not force else {}
        if index.get("build", {}).get("key") == key:
            for s in index.get("shards", []):
                src = self.out / s["name"]
                if s["name"] in wanted and s["name"] not in self.done and src.is_file() \
                        and sha256_file(src) == s.get("sha256"):
                    _link_or_copy(src, self.path / s["name"])
                    self.done[s["name"]] = s["sha256"]
        self.reused = len(self.done)
        _write_manifest(self.path, key, self.done)

    def mark_done(self, name: str, sha: str) -> None:
        self.done[name] = sha
        _write_manifest(self.path, self.key, self.done)

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def finish(self) -> None:
        """Drop the manifest and swap the folder in as ``out``."""
        (self.path / MANIFEST).unlink(missing_ok=True)
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            self.out.rename(old)
        self.path.rename(self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def up_to_date(out: Path, key: str) -> dict | None:
    """The index of ``out`` when it was built with ``key`` and every shard still verifies."""
    index = _read_json(Path(out) / INDEX_FILE)
    if index.get("build", {}).get("key") != key:
        return None
    for s in index.get("shards", []):
        f = Path(out) / s["name"]
        if not f.is_file() or sha256_file(f) != s.get("sha256"):
            return None
    return index


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
