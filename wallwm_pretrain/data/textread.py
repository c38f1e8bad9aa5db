"""Text and JSON as people write them: UTF-8 with or without a byte-order mark, LF or CRLF.

Anything else (Latin-1, UTF-16, a stray byte) fails naming the file and the line of the first
undecodable byte, rather than being guessed at: a caption read in the wrong encoding would be
silently wrong training data. The trade-off: a file in another encoding has to be converted.
"""

from __future__ import annotations

import json
from typing import Any, Type

from wallwm_pretrain.data.errors import InputError

BOM = b"\xef\xbb\xbf"


def decode_text(raw: bytes, source: str, error: Type[InputError] = InputError) -> str:
    """``raw`` as text with ``\\n`` line ends; ``error`` names ``source`` and the line."""
    if raw.startswith(BOM):
        raw = raw[len(BOM):]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise error(
            f"{source}, line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})"
        ) from None
    return text.replace("\r\n", "\n")


def load_json(raw: bytes, source: str, error: Type[InputError] = InputError) -> Any:
    """Strict JSON from ``raw`` (no NaN/Infinity literals, which JSON does not have)."""
    text = decode_text(raw, source, error)

    def reject(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=reject)
    except json.JSONDecodeError as exc:
        raise error(f"{source}, line {exc.lineno}: not valid JSON ({exc.msg})") from None
    except ValueError as exc:
        raise error(f"{source}: not valid JSON ({exc})") from None
    except RecursionError:
        raise error(f"{source}: JSON nested too deeply") from None
