"""Shards checked against index.json before the first step (``data.verify``).

- ``size`` (default): each file's byte count (when the index records ``bytes``) and its sample
  count read from the tar headers, which also finds a tar cut inside a member. Costs one read of
  each header block: seconds for thousands of shards.
- ``sha256``: the above plus each file's sha256 against the index. Reads every byte.
- ``none``: no check; damage is found when the loader reaches it.

Every mismatch of the folder is reported in one :class:`ShardError` (shard, expected, found),
so a user fixes them all at once. Every rank checks every shard: epochs permute shards across
ranks, so each rank reads all of them over a run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from wallwm_pretrain.data.errors import ShardError
from wallwm_pretrain.data.tarread import scan_tar

MODES = ("size", "sha256", "none")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_problems(folder: Path, shard: dict, mode: str) -> list[str]:
    """Mismatches of one shard against its index entry, one line each."""
    path = folder / shard["name"]
    problems = []
    found = path.stat().st_size
    if "bytes" in shard and shard["bytes"] != found:
        problems.append(f"{shard['name']}: size expected {shard['bytes']} bytes, found {found}")
    try:
        scan = scan_tar(str(path))
    except ShardError as exc:
        problems.append(f"{shard['name']}: {str(exc).removeprefix(str(path) + ': ')}")
    else:
        if scan.samples != shard["samples"]:
            problems.append(f"{shard['name']}: samples expected {shard['samples']}, found {scan.samples}")
    if mode == "sha256" and shard.get("sha256"):
        digest = _sha256(path)
        if digest != shard["sha256"]:
            problems.append(f"{shard['name']}: sha256 expected {shard['sha256']}, found {digest}")
    return problems


def verify_shards(folder: str | Path, index: dict, mode: str) -> None:
    """Raise one :class:`ShardError` listing every shard that does not match ``index``."""
    if mode == "none":
        return
    folder = Path(folder)
    problems = [p for shard in index["shards"] for p in shard_problems(folder, shard, mode)]
    if problems:
        raise ShardError(
            f"{folder}: {len(problems)} mismatch(es) against index.json (data.verify={mode}):\n  "
            + "\n  ".join(problems)
        )
