"""The shard reader: one WebDataset tar -> crude samples ``{"__key__", "__url__", ext: bytes}``.

Members are grouped into samples as WebDataset groups them (the key is the member path up to
the first dot of its file name, the rest is the extension), in file order. Written on
``tarfile`` rather than taken from webdataset so that a damaged tar is one
:class:`~wallwm_pretrain.data.errors.ShardError` naming the shard and the member, raised before
the sample it damages is handed on (a partial sample never reaches the cooker as a second,
different error), and so that a member's declared size is checked against the file's size
before anything is read (a lying header cannot cause a huge allocation).

The same walk over the headers, without reading payloads, is :func:`scan_tar`, which the loader
uses to verify shards against index.json before training starts. The tar is read with random
access; ``source.py`` opens local files, remote objects (seekable through range requests) and
``pipe:`` commands (copied to a local file first) alike, so the checks are the same for all.
"""

from __future__ import annotations

import re
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from wallwm_pretrain.data.errors import ShardError
from wallwm_pretrain.data.source import open_shard

# WebDataset's split of a member path into (sample key, extension)
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)[.]([^/]*)$")


@dataclass
class TarScan:
    samples: int
    members: int


def _members(fh: BinaryIO, url: str, size: int) -> Iterator[tuple[str, str, tarfile.TarInfo]]:
    """(key, extension, header) of each regular member whose payload lies inside the file."""
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            while True:
                try:
                    info = tar.next()
                except ShardError:  # the remote file gave up (named already)
                    raise
                except (tarfile.TarError, EOFError, ValueError, OverflowError) as exc:
                    raise ShardError(f"{url}: unreadable tar after {tar.offset} bytes ({exc})") from None
                if info is None:
                    # tarfile also stops, silently, at a damaged or missing header: only the
                    # end-of-archive block (zeros) says that the tar really ends here
                    fh.seek(tar.offset)
                    end = fh.read(tarfile.BLOCKSIZE)
                    if len(end) < tarfile.BLOCKSIZE or end.count(0) != tarfile.BLOCKSIZE:
                        raise ShardError(
                            f"{url}: no valid member header or end-of-archive block at byte {tar.offset} "
                            f"of {size} (cut short or damaged tar)"
                        )
                    return
                if not info.isreg():
                    continue
                if info.offset_data + info.size > size:
                    raise ShardError(
                        f"{url}: member {info.name!r} ends at byte {info.offset_data} + {info.size} = "
                        f"{info.offset_data + info.size}, past the end of the {size}-byte file (truncated tar)"
                    )
                match = _KEY_EXT.match(info.name)
                if match is None:
                    continue  # no extension: not a sample member (WebDataset skips these too)
                yield match[1], match[2].lower(), info
    except tarfile.TarError as exc:
        raise ShardError(f"{url}: not a readable tar ({exc})") from None


def scan_tar(url: str, cache=None) -> TarScan:
    """Samples and members of a tar from its headers alone (payloads are skipped)."""
    fh, size = open_shard(url, cache)
    with fh:
        keys, members, last = 0, 0, None
        for key, _, _ in _members(fh, url, size):
            members += 1
            if key != last:
                keys, last = keys + 1, key
    return TarScan(samples=keys, members=members)


def read_tar(url: str, cache=None) -> Iterator[dict]:
    """Crude samples of one tar, in file order; :class:`ShardError` on a damaged tar (the
    sample being assembled when the damage is found is not yielded). ``cache``: the node-local
    :class:`~wallwm_pretrain.data.cache.ShardCache` for remote shards, or None."""
    fh, size = open_shard(url, cache)
    with fh:
        current: dict | None = None
        for key, ext, info in _members(fh, url, size):
            if current is not None and key != current["__key__"]:
                yield current
                current = None
            if current is None:
                current = {"__key__": key, "__url__": url}
            if ext in current:
                raise ShardError(f"{url}: sample {key} has two members '{ext}'")
            fh.seek(info.offset_data)
            data = fh.read(info.size)
            if len(data) != info.size:
                raise ShardError(f"{url}: member {info.name!r} is cut short ({len(data)} of {info.size} bytes)")
            current[ext] = data
        if current is not None:
            yield current
