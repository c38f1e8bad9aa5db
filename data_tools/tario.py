"""Deterministic WebDataset tar writing.

WebDataset shards are plain tar files whose members are grouped into samples by the basename
up to the first dot. We write them with ``tarfile`` directly instead of ``webdataset.TarWriter``
because every header field that could vary between runs (mtime, uid/gid, user names, mode) must
be fixed for the same inputs to give byte-identical shards.
"""

from __future__ import annotations

import io
import tarfile
from typing import BinaryIO


class DeterministicTarWriter:
    """Append samples (dicts of extension -> bytes) to a tar with fixed member metadata."""

    def __init__(self, fileobj: BinaryIO):
        self._tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT)

    def write_sample(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key:
            raise ValueError(f"sample key {key!r} must not contain '.' (WebDataset splits on it)")
        for ext, data in members.items():
            info = tarfile.TarInfo(name=f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()
