"""Read samples back from a shard folder (index.json + tars), for cluster and inspect.

Plain ``tarfile`` in index order, yielding only the members asked for (the frames of a sample
are skipped, not decoded). A tar that cannot be read, or a folder whose index.json lists a
missing shard, raises DataToolsError naming the file.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataToolsError
from . import textio

INDEX_FILE = "index.json"


def read_index(folder: Path) -> dict:
    path = Path(folder) / INDEX_FILE
    try:
        return textio.read_json(path)
    except FileNotFoundError:
        raise DataToolsError(f"{path} not found: {folder} is not a shard folder") from None
    except (OSError, ValueError) as exc:
        raise DataToolsError(f"{path}: cannot read ({exc})") from None


def iter_samples(folder: Path, wanted: tuple[str, ...] = ("json",)
                 ) -> Iterator[tuple[str, str, dict[str, bytes]]]:
    """(shard name, sample key, {ext: bytes}) for every sample, in shard order."""
    index = read_index(folder)
    for shard in index.get("shards", []):
        for key, members in iter_tar(Path(folder) / shard["name"], wanted):
            yield shard["name"], key, members


def iter_tar(path: Path, wanted: tuple[str, ...] = ("json",)
             ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(sample key, {ext: bytes}) for every sample of one tar, in tar order."""
    current, members = None, {}
    try:
        with tarfile.open(path) as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if key != current:
                    if current is not None:
                        yield current, members
                    current, members = key, {}
                if ext in wanted:
                    members[ext] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError) as exc:
        raise DataToolsError(f"{path}: cannot read shard ({exc})") from None
    if current is not None:
        yield current, members


def npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def sample_meta(members: dict[str, bytes], where: str) -> dict:
    """A sample's ``json`` member as an object; DataToolsError naming ``where`` (shard and key)
    when it is missing, not JSON, or not an object."""
    if "json" not in members:
        raise DataToolsError(f"{where} has no json member (meta)")
    try:
        meta = json.loads(members["json"])
    except ValueError as exc:
        raise DataToolsError(f"{where}.json: cannot read ({exc})") from None
    if not isinstance(meta, dict):
        raise DataToolsError(f"{where}.json: must hold an object")
    return meta
