"""A shard folder's ``index.json``: read, checked against the shapes the loader relies on.

The loader trusts the index for the shard list, per-shard sample counts (and, when recorded,
bytes and sha256), the normalisation statistics, the cluster counts and the data's dims. Each
of those is checked here, once, so that a hand-edited or damaged index fails naming the file
and the key instead of surfacing later as a numpy error. Keys the loader does not read are not
checked (a reader ignores keys it does not know).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from wallwm_pretrain.data.errors import ShardError
from wallwm_pretrain.data.source import check_location, file_url, read_file, sizes
from wallwm_pretrain.data.textread import load_json

INDEX_FILE = "index.json"
# index.json key -> what it must hold, for the dims the model may take from the data
DIM_KEYS = ("action_dim", "state_dim", "image_size", "fps")


def shard_kind(index: dict) -> str:
    """What a folder holds: ``event`` (no ``kind`` in index.json: build-shards output),
    ``conditioner`` (build-conditioner) or ``episode`` (build-episodes); the data modes say
    which kinds they read (``modes/``)."""
    return str(index.get("kind", "event"))


def _is_count(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _check_shards(shards: Any, where: str) -> None:
    if not isinstance(shards, list) or not shards:
        raise ShardError(f"{where}: 'shards' must be a non-empty list, got {shards!r:.80}")
    seen = set()
    for i, shard in enumerate(shards):
        at = f"{where}: shards[{i}]"
        if not isinstance(shard, dict):
            raise ShardError(f"{at} must be an object, got {type(shard).__name__}")
        name = shard.get("name")
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ShardError(f"{at}: 'name' must be a file name inside the folder, got {name!r:.80}")
        if name in seen:
            raise ShardError(f"{at}: shard {name} is listed twice")
        seen.add(name)
        if not _is_count(shard.get("samples")):
            raise ShardError(f"{at} ({name}): 'samples' must be an int >= 0, got {shard.get('samples')!r:.80}")
        if "bytes" in shard and not _is_count(shard["bytes"]):
            raise ShardError(f"{at} ({name}): 'bytes' must be an int >= 0, got {shard['bytes']!r:.80}")
        sha = shard.get("sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
            raise ShardError(f"{at} ({name}): 'sha256' must be 64 hex digits, got {sha!r:.80}")


def _check_stats(stats: Any, where: str) -> None:
    if stats is None:
        return
    if not isinstance(stats, dict):
        raise ShardError(f"{where}: 'stats' must be an object, got {type(stats).__name__}")
    for part in ("action", "state"):
        if part not in stats:
            continue
        entry = stats[part]
        if not isinstance(entry, dict):
            raise ShardError(f"{where}: stats.{part} must be an object")
        widths = set()
        for k in ("mean", "std"):
            v = entry.get(k)
            ok = isinstance(v, list) and v and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
            )
            if not ok:
                raise ShardError(f"{where}: stats.{part}.{k} must be a non-empty list of finite numbers")
            widths.add(len(v))
        if len(widths) != 1:
            raise ShardError(f"{where}: stats.{part}.mean and .std differ in length")


def _check_counts(index: dict, where: str) -> None:
    for key in ("vl_cluster_counts", "action_cluster_counts", "window_vl_cluster_counts",
                "window_action_cluster_counts"):
        counts = index.get(key)
        if counts is None:
            continue
        if not isinstance(counts, dict) or not all(
            isinstance(k, str) and k.lstrip("-").isdigit() and _is_count(v) for k, v in counts.items()
        ):
            raise ShardError(f"{where}: '{key}' must map cluster ids to counts >= 0")


def _check_dims(index: dict, where: str) -> None:
    for key in DIM_KEYS:
        if key in index and not _is_count(index[key], 1):
            raise ShardError(f"{where}: '{key}' must be an int >= 1, got {index[key]!r:.80}")
    views = index.get("views")
    if views is not None and (not isinstance(views, list) or not views or not all(isinstance(v, str) for v in views)):
        raise ShardError(f"{where}: 'views' must be a non-empty list of view names, got {views!r:.80}")


def read_index(folder: str | Path) -> dict:
    """The checked index of a shard folder (a path or a URL, ``source.py``); :class:`ShardError`
    names the file and the key."""
    check_location(folder)
    path = file_url(folder, INDEX_FILE)
    try:
        raw = read_file(folder, INDEX_FILE)
    except FileNotFoundError:
        raise ShardError(
            f"{path} not found: data.shards must name a folder written by `python -m data_tools build-shards`"
        ) from None
    except OSError as exc:
        raise ShardError(f"{path}: cannot read ({exc.strerror or exc})") from None
    index = load_json(raw, str(path), ShardError)
    if not isinstance(index, dict):
        raise ShardError(f"{path}: must hold a JSON object, got {type(index).__name__}")
    if not index.get("shards"):
        raise ShardError(f"{path}: lists no shards")
    _check_shards(index["shards"], str(path))
    _check_stats(index.get("stats"), str(path))
    _check_counts(index, str(path))
    _check_dims(index, str(path))
    found = sizes(folder, [s["name"] for s in index["shards"]])  # None: a pipe: cannot be listed
    missing = [name for name, size in (found or {}).items() if size is None]
    if missing:
        raise ShardError(f"{folder}: shards listed in index.json are missing: {[m[:80] for m in missing[:5]]}")
    return index
