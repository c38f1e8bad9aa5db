"""Shards checked against index.json before the first step (``data.verify``).

- ``size`` (default): each file's byte count (when the index records ``bytes``) and, for a
  local folder, its sample count read from the tar headers, which also finds a tar cut inside
  a member. Costs one read of each header block: seconds for thousands of local shards. For
  ``s3://`` and ``http(s)://`` folders only the sizes the storage reports are compared (a
  header scan would be a request per member); damage inside a remote tar is found as it is
  read, and handled as then (``badinput.py``). A ``pipe:`` folder cannot be sized without
  reading it whole, so it needs ``sha256`` or ``none``.
- ``sha256``: the above plus each file's sha256 against the index. Reads every byte.
- ``none``: no check; damage is found when the loader reaches it.

Every mismatch of the folder is reported in one :class:`ShardError` (shard, expected, found),
so a user fixes them all at once. Every rank checks every shard: epochs permute shards across
ranks, so each rank reads all of them over a run.
"""

from __future__ import annotations

from pathlib import Path

from wallwm_pretrain.config import ConfigError
from wallwm_pretrain.data.errors import ShardError
from wallwm_pretrain.data.source import file_url, is_pipe, is_remote, sha256, sizes
from wallwm_pretrain.data.tarread import scan_tar

MODES = ("size", "sha256", "none")


def shard_problems(folder: str | Path, shard: dict, mode: str, found: int | None = None, cache=None) -> list[str]:
    """Mismatches of one shard against its index entry, one line each (``found``: its size in
    bytes when already known)."""
    url = file_url(folder, shard["name"])
    remote = is_remote(folder)
    problems = []
    if found is None and not is_pipe(folder):
        found = (sizes(folder, [shard["name"]]) or {}).get(shard["name"])
    if found is not None and "bytes" in shard and shard["bytes"] != found:
        problems.append(f"{shard['name']}: size expected {shard['bytes']} bytes, found {found}")
    if not remote:
        try:
            scan = scan_tar(url)
        except ShardError as exc:
            problems.append(f"{shard['name']}: {str(exc).removeprefix(url + ': ')}")
        else:
            if scan.samples != shard["samples"]:
                problems.append(f"{shard['name']}: samples expected {shard['samples']}, found {scan.samples}")
    if mode == "sha256" and shard.get("sha256"):
        try:
            digest = sha256(url, cache)
        except ShardError as exc:
            problems.append(f"{shard['name']}: {str(exc).removeprefix(url + ': ')}")
        else:
            if digest != shard["sha256"]:
                problems.append(f"{shard['name']}: sha256 expected {shard['sha256']}, found {digest}")
    return problems


def verify_shards(folder: str | Path, index: dict, mode: str, cache=None) -> None:
    """Raise one :class:`ShardError` listing every shard that does not match ``index``."""
    if mode == "none":
        return
    if mode == "size" and is_pipe(folder):
        raise ConfigError(
            f"data.verify=size cannot check {folder} without reading every shard whole (a pipe: has no "
            "sizes): set data.verify=sha256 (reads every byte before training) or none (damage found as read)"
        )
    found = sizes(folder, [s["name"] for s in index["shards"]]) or {}
    problems = [p for shard in index["shards"]
                for p in shard_problems(folder, shard, mode, found.get(shard["name"]), cache)]
    if problems:
        raise ShardError(
            f"{folder}: {len(problems)} mismatch(es) against index.json (data.verify={mode}):\n  "
            + "\n  ".join(problems)
        )
