"""Text inputs as people write them: UTF-8 with or without a byte-order mark, LF or CRLF.

events.jsonl, LeRobot's meta/*.json(l), sidecars and shard indexes are read through here.
Other encodings (Latin-1, UTF-16, a stray byte) fail naming the file and the line of the first
undecodable byte instead of being guessed at: a caption decoded in the wrong encoding would be
silently wrong. The trade-off: such a file has to be converted once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Type

from .errors import DataToolsError

BOM = b"\xef\xbb\xbf"


def read_text(path: Path, error: Type[DataToolsError] = DataToolsError) -> str:
    """The file's text with ``\\n`` line ends; ``error`` for an unreadable or non-UTF-8 file
    (FileNotFoundError is left to the caller, which knows what the file is for)."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
                    "save the file as UTF-8") from None
    return text.replace("\r\n", "\n")


def lines(path: Path, error: Type[DataToolsError] = DataToolsError) -> list[tuple[int, str]]:
    """(line number, line) of every non-blank line."""
    return [(n, line) for n, line in enumerate(read_text(path, error).split("\n"), start=1) if line.strip()]


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str, where: str, error: Type[DataToolsError] = DataToolsError) -> Any:
    """Strict JSON (no NaN/Infinity literals); ``error`` names ``where``."""
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise error(f"{where}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{where}: not valid JSON ({exc})") from None


def read_json(path: Path, error: Type[DataToolsError] = DataToolsError) -> Any:
    text = read_text(path, error)
    try:
        return json.loads(text, parse_constant=_no_constants)
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from None
