"""Where a shard folder lives: a local path, ``s3://bucket/prefix``, ``http(s)://host/prefix`` or
``pipe:COMMAND`` (WebDataset's convention: the file is the command's standard output).

This is the one place that opens a file of a shard folder; everything above it (the index, the
verifier, the tar reader, the data tools' readers) names files by :func:`file_url` and reads them
through :func:`read_file` and :func:`open_shard`.

- ``s3://`` and ``http(s)://`` go through fsspec (s3fs for S3): a shard is a seekable file that
  fetches byte ranges with read-ahead, so the tar reader's checks (a member's declared size
  against the object's size, the end-of-archive block) run unchanged. S3 credentials and the
  endpoint come only from the environment or the standard AWS config (``AWS_ACCESS_KEY_ID``,
  ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``, ``~/.aws/...``), as boto does it; a location with
  credentials or a query string in it is refused, so every URL the project logs is safe to log.
- ``pipe:`` runs the command through webdataset's ``gopen`` (its exit status is checked); the
  command names a file of the folder by ``{name}``, e.g. ``pipe:aws s3 cp s3://b/p/{name} -``.
  A pipe cannot seek, so a shard is first copied to a temporary file (or the node-local cache).
- With ``data.cache_dir`` a remote shard is copied whole into a node-local cache bounded in
  size (``cache.py``) and read from there.

Reads of a remote shard that fail on the wire (connection reset, a response cut short) are
retried from the byte where they failed (:class:`RetryingReader`); when the retries run out the
read fails with a :class:`ShardError` naming the URL, which the loader handles as it handles a
damaged local tar (quarantine within ``data.max_bad_samples``, or stop).
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, Callable, Optional
from urllib.parse import urlsplit

from wallwm_pretrain.data.errors import ShardError

log = logging.getLogger("wallwm_pretrain.data")

URL_SCHEMES = ("s3://", "http://", "https://")
PIPE = "pipe:"
NAME = "{name}"
READ_ATTEMPTS = 4
"""Tries of one remote read before the shard counts as unreadable."""
_BLOCK = 8 << 20  # bytes per range request (fsspec's read-ahead block)


def is_remote(location: str | Path) -> bool:
    """True for ``s3://``, ``http(s)://`` and ``pipe:`` locations."""
    text = str(location)
    return text.startswith(URL_SCHEMES) or text.startswith(PIPE)


def is_pipe(location: str | Path) -> bool:
    return str(location).startswith(PIPE)


def check_location(location: str | Path) -> None:
    """ShardError unless a remote location can name the files of a folder without secrets."""
    text = str(location)
    if text.startswith(PIPE):
        if NAME not in text:
            raise ShardError(
                f"{text}: a pipe: location must name the file it reads with {NAME} (e.g. "
                f"'pipe:aws s3 cp s3://bucket/prefix/{NAME} -'); the loader substitutes index.json "
                "and each shard's name"
            )
        return
    if not text.startswith(URL_SCHEMES):
        return
    parts = urlsplit(text)
    if parts.username or parts.password:
        raise ShardError(
            f"{parts.scheme}://{parts.hostname}/...: credentials in a shard URL are refused (they would be "
            "logged); give them through the environment or the AWS config instead"
        )
    if parts.query or parts.fragment:
        raise ShardError(f"{text.split('?')[0]}: a shard folder URL takes no query string or fragment")
    if not parts.netloc:
        raise ShardError(f"{text}: no bucket or host in the URL")


def file_url(location: str | Path, name: str) -> str:
    """The path or URL of the file ``name`` of the shard folder at ``location``."""
    text = str(location)
    if text.startswith(PIPE):
        return text.replace(NAME, name)
    if text.startswith(URL_SCHEMES):
        return text.rstrip("/") + "/" + name
    return str(Path(text) / name)


def _fs(url: str):
    import fsspec  # imported here: a local run does not need it

    # no listings cache: a shard that vanished must be seen to vanish
    options = {"use_listings_cache": False} if url.startswith("s3://") else {}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:  # s3fs (or aiohttp) missing
        raise ShardError(f"{url}: cannot read this kind of URL ({exc})") from None


# errors of the wire (not of the data): worth a retry from the same byte
def _transient() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [OSError, asyncio.TimeoutError, EOFError]
    try:
        import aiohttp

        kinds.append(aiohttp.ClientError)
    except ImportError:  # pragma: no cover - aiohttp comes with fsspec's http support
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        kinds.append(FSTimeoutError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class RetryingReader(io.RawIOBase):
    """A seekable remote file whose failed reads are retried on a fresh connection from the byte
    where they failed; after :data:`READ_ATTEMPTS` tries a :class:`ShardError` names the URL.

    Reads go through a read-ahead file (one range request per block). After a failure the rest
    of the shard is read with one range request per read, asking for exactly the bytes the tar
    reader wants: so a shard whose connection keeps breaking at byte N gives every sample that
    lies before N, as a local tar cut at N does, and is then quarantined the same way.
    fsspec's HTTP file does not retry a read that breaks off (s3fs retries some errors itself,
    not every reset), so this thin layer is the project's; it only reopens and seeks.
    """

    def __init__(self, url: str, opener: Callable[[bool], BinaryIO], size: int) -> None:
        super().__init__()
        self.url, self._opener, self.size = url, opener, size
        self._fh: Optional[BinaryIO] = None
        self._pos = 0
        self._exact = False  # after a failure: a range request per read

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        if n == 0:
            return b""
        for attempt in range(1, READ_ATTEMPTS + 1):
            try:
                if self._fh is None:
                    self._fh = self._opener(self._exact)
                self._fh.seek(self._pos)
                data = self._fh.read(n)
                if len(data) != n:
                    raise EOFError(f"got {len(data)} of {n} bytes")
            except _transient() as exc:
                self._drop()
                gone = isinstance(exc, FileNotFoundError)
                if gone or attempt == READ_ATTEMPTS:
                    raise ShardError(
                        f"{self.url}: read of bytes {self._pos}..{self._pos + n} failed "
                        f"{'(object gone)' if gone else f'{attempt} times'} ({_describe(exc)})"
                    ) from None
                log.warning("%s: read of bytes %d..%d failed (%s); retrying (try %d of %d)",
                            self.url, self._pos, self._pos + n, _describe(exc), attempt + 1, READ_ATTEMPTS)
                self._exact = True
                time.sleep(0.1 * attempt)
                continue
            self._pos += len(data)
            return data
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close too
                pass
            self._fh = None

    def close(self) -> None:
        self._drop()
        super().close()


def remote_size(url: str) -> int:
    """Bytes of a remote object; FileNotFoundError when it is not there."""
    fs, path = _fs(url)
    info = fs.info(path)
    size = info.get("size")
    if size is None:
        raise ShardError(f"{url}: the server does not say the object's size (no Content-Length)")
    return int(size)


def _open_url(url: str) -> tuple[BinaryIO, int]:
    fs, path = _fs(url)
    size = remote_size(url)

    def opener(exact: bool) -> BinaryIO:
        if exact:
            return fs.open(path, "rb", block_size=_BLOCK, cache_type="none")
        return fs.open(path, "rb", block_size=_BLOCK, cache_type="readahead")

    return RetryingReader(url, opener, size), size


def _spool_pipe(url: str, into: BinaryIO) -> None:
    from webdataset.gopen import gopen  # exit status checked: a failed command is an error

    stream = gopen(url, "rb")
    try:
        shutil.copyfileobj(stream, into, _BLOCK)
    finally:
        stream.close()


def open_shard(url: str, cache=None) -> tuple[BinaryIO, int]:
    """A seekable binary file of the shard ``url`` and its size in bytes; ShardError naming the
    URL when it cannot be opened. ``cache``: a :class:`~wallwm_pretrain.data.cache.ShardCache`
    (remote shards only)."""
    try:
        if url.startswith(PIPE):
            if cache is not None:
                path = cache.fetch(url, None, lambda fh: _spool_pipe(url, fh))
                return open(path, "rb"), path.stat().st_size
            tmp = tempfile.TemporaryFile(prefix="wallwm-shard-")
            _spool_pipe(url, tmp)
            size = tmp.tell()
            tmp.seek(0)
            return tmp, size
        if url.startswith(URL_SCHEMES):
            size = remote_size(url) if cache is not None else 0
            if cache is not None and cache.fits(url, size):

                def fill(fh: BinaryIO) -> None:
                    src, _ = _open_url(url)
                    with src:
                        shutil.copyfileobj(src, fh, _BLOCK)

                try:
                    path = cache.fetch(url, size, fill)
                    return open(path, "rb"), size
                except ShardError as exc:
                    # read it from the storage instead: the samples before the damage are then
                    # read as without a cache (and as from a local tar cut there)
                    log.warning("shard cache %s: cannot copy %s (%s); reading it uncached", cache.folder, url, exc)
            return _open_url(url)
        try:
            fh = open(url, "rb")
        except OSError as exc:
            raise ShardError(f"{url}: cannot open ({exc.strerror or exc})") from None
        return fh, os.fstat(fh.fileno()).st_size
    except ShardError:
        raise
    except FileNotFoundError:
        raise ShardError(f"{url}: cannot open (not found)") from None
    except _transient() as exc:
        raise ShardError(f"{url}: cannot open ({_describe(exc)})") from None


def read_file(location: str | Path, name: str) -> bytes:
    """The whole file ``name`` of a shard folder (index.json, a side file): FileNotFoundError
    when it is not there, OSError (or ShardError) when it cannot be read."""
    url = file_url(location, name)
    if url.startswith(PIPE):
        buf = io.BytesIO()
        _spool_pipe(url, buf)
        return buf.getvalue()
    if url.startswith(URL_SCHEMES):
        fh, _ = _open_url(url)
        with fh:
            return fh.read()
    return Path(url).read_bytes()


def sizes(location: str | Path, names: list[str]) -> Optional[dict[str, Optional[int]]]:
    """Byte size of each named file (None: missing); None for a ``pipe:`` folder, which cannot
    be listed without reading it."""
    text = str(location)
    if text.startswith(PIPE):
        return None
    found: dict[str, Optional[int]] = {}
    for name in names:
        url = file_url(text, name)
        try:
            found[name] = remote_size(url) if text.startswith(URL_SCHEMES) else Path(url).stat().st_size
        except FileNotFoundError:
            found[name] = None
        except OSError as exc:
            if text.startswith(URL_SCHEMES):
                raise ShardError(f"{url}: cannot stat ({_describe(exc)})") from None
            found[name] = None  # a name the file system cannot hold
    return found


def sha256(url: str, cache=None) -> str:
    fh, _ = open_shard(url, cache)
    h = hashlib.sha256()
    with fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
