"""A node-local copy of remote shards (``data.cache_dir``), bounded by ``data.cache_max_gb``.

A remote shard is copied whole into the cache the first time a reader on the node opens it
and read from the local file from then on (later epochs, other loader workers, other ranks of
the node). A file appears under its final name only once complete (written to a temporary
name, then renamed), so a reader never sees half a shard, and two readers that fetch the same
shard at once both end with the same complete file. The name holds a digest of the URL and the
object's size, so a replaced object is fetched again. Before a fetch the least recently used
files are deleted until the new one fits; a shard larger than the whole bound is read without
caching (one warning).

fsspec has a caching file system (``filecache::``), but it keeps its own metadata file that
concurrent processes of one node rewrite, and no size bound; the few lines here avoid both.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Optional

log = logging.getLogger("wallwm_pretrain.data")

_PARTIAL = ".partial-"


@dataclass(frozen=True)
class ShardCache:
    folder: str
    max_bytes: int

    def path_for(self, url: str, size: Optional[int]) -> Path:
        digest = hashlib.sha256(f"{url}\0{size}".encode()).hexdigest()[:20]
        tail = re.sub(r"[^A-Za-z0-9._-]", "_", url.rstrip("/").rsplit("/", 1)[-1])[-60:]
        return Path(self.folder) / f"{digest}-{tail}"

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for p in Path(self.folder).iterdir():
            if _PARTIAL in p.name:
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # evicted by another reader meanwhile
                continue
            out.append((st.st_mtime, st.st_size, p))
        return sorted(out)

    def _make_room(self, need: int, keep: Optional[Path] = None) -> None:
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total + need <= self.max_bytes:
                break
            if path == keep:
                continue
            path.unlink(missing_ok=True)  # readers that hold it open keep reading (POSIX)
            total -= size
            log.info("shard cache %s: evicted %s (%d bytes)", self.folder, path.name, size)

    def fits(self, url: str, size: int) -> bool:
        """False (with a warning) for a shard larger than the whole cache."""
        if size <= self.max_bytes:
            return True
        log.warning("shard cache %s: %s (%d bytes) exceeds data.cache_max_gb; read without caching",
                    self.folder, url, size)
        return False

    def fetch(self, url: str, size: Optional[int], fill: Callable[[BinaryIO], None]) -> Path:
        """The local copy of ``url`` (``size`` bytes, None when unknown), made by ``fill``
        (which writes the object into the file it is given) when not cached yet."""
        Path(self.folder).mkdir(parents=True, exist_ok=True)
        path = self.path_for(url, size)
        if path.exists():
            os.utime(path)  # recently used
            return path
        if size is not None:
            self._make_room(size)
        tmp = path.with_name(f"{path.name}{_PARTIAL}{os.getpid()}")
        try:
            with open(tmp, "wb") as fh:
                fill(fh)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        if size is None:  # a pipe: its size is known only now (kept even when over the bound)
            self._make_room(0, keep=path)
        return path
