"""Read samples back from a shard folder (index.json + tars), for cluster and inspect.

Plain ``tarfile`` in index order, yielding only the members asked for (the frames of a sample
are skipped, not decoded). A tar that cannot be read, or a folder whose index.json lists a
missing shard, raises DataToolsError naming the file. A folder may be a path or a URL
(``s3://``, ``http(s)://``, ``pipe:...{name}...``): files are opened through the loader's
``wallwm_pretrain.data.source``, so the data tools read what training reads.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Iterator

import numpy as np

from wallwm_pretrain.data.errors import ShardError
from wallwm_pretrain.data.source import check_location, file_url, is_remote, open_shard, read_file

from .errors import DataToolsError
from . import textio

INDEX_FILE = "index.json"


def location(text: str) -> str | Path:
    """A ``--shards`` argument: a URL stays a string, anything else is a local path."""
    return text if is_remote(text) else Path(text)


def read_index(folder: str | Path) -> dict:
    path = file_url(folder, INDEX_FILE)
    if not is_remote(folder):
        try:
            return textio.read_json(Path(path))
        except FileNotFoundError:
            raise DataToolsError(f"{path} not found: {folder} is not a shard folder") from None
        except (OSError, ValueError) as exc:
            raise DataToolsError(f"{path}: cannot read ({exc})") from None
    try:
        check_location(folder)
        return json.loads(read_file(folder, INDEX_FILE))
    except FileNotFoundError:
        raise DataToolsError(f"{path} not found: {folder} is not a shard folder") from None
    except (OSError, ValueError) as exc:  # ShardError is a ValueError
        raise DataToolsError(f"{path}: cannot read ({exc})") from None


def iter_samples(folder: str | Path, wanted: tuple[str, ...] = ("json",)
                 ) -> Iterator[tuple[str, str, dict[str, bytes]]]:
    """(shard name, sample key, {ext: bytes}) for every sample, in shard order."""
    index = read_index(folder)
    for shard in index.get("shards", []):
        url = file_url(folder, shard["name"])
        for key, members in iter_tar(url if is_remote(folder) else Path(url), wanted):
            yield shard["name"], key, members


def iter_tar(path: str | Path, wanted: tuple[str, ...] = ("json",)
             ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(sample key, {ext: bytes}) for every sample of one tar (a path or URL), in tar order."""
    current, members = None, {}
    try:
        fh, _ = open_shard(str(path))
        with fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
            for m in tar:
                key, _, ext = m.name.partition(".")
                if key != current:
                    if current is not None:
                        yield current, members
                    current, members = key, {}
                if ext in wanted:
                    members[ext] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError, ShardError) as exc:
        where = str(path)
        raise DataToolsError(f"{where}: cannot read shard ({str(exc).removeprefix(where + ': ')})") from None
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
