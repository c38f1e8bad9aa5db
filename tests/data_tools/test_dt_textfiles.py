"""Text inputs as people write them: a UTF-8 byte-order mark and CRLF line ends are read like
plain UTF-8; other encodings fail naming the file and the line."""

import json

import pytest

from data_tools.errors import DatasetFormatError, EventError
from data_tools.events import read_events
from data_tools.lerobot.base import read_info
from data_tools.lerobot.v21 import read_jsonl

EVENTS = [
    {"episode_index": 0, "level": "L3", "index": 0, "start": 0, "end": 40, "caption": "put the mug on the shelf"},
    {"episode_index": 0, "level": "L1", "index": 0, "start": 0, "end": 12, "caption": "greife die Tasse (ä, 杯)"},
]


def write(path, rows, bom=False, newline="\n", encoding="utf-8"):
    text = newline.join(json.dumps(r, ensure_ascii=False) for r in rows) + newline
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode(encoding))
    return path


@pytest.mark.parametrize("bom, newline", [(True, "\n"), (False, "\r\n"), (True, "\r\n")])
def test_events_with_bom_or_crlf_read_like_plain_utf8(tmp_path, bom, newline):
    plain = read_events(write(tmp_path / "plain.jsonl", EVENTS))
    other = read_events(write(tmp_path / "events.jsonl", EVENTS, bom=bom, newline=newline))
    assert other == plain and other[1].caption == "greife die Tasse (ä, 杯)"


def test_events_in_another_encoding_name_file_and_line(tmp_path):
    rows = [EVENTS[0], {**EVENTS[1], "caption": "greife die Tasse (ä)"}]
    path = write(tmp_path / "events.jsonl", rows, encoding="latin-1")
    with pytest.raises(EventError, match=rf"^{path}:2: not UTF-8 text \(byte 0xe4\)"):
        read_events(path)
    utf16 = tmp_path / "utf16.jsonl"
    utf16.write_bytes("\n".join(json.dumps(r) for r in EVENTS).encode("utf-16"))
    with pytest.raises(EventError, match=rf"^{utf16}:1: not UTF-8 text"):
        read_events(utf16)


def test_lerobot_metadata_with_bom_and_crlf(tmp_path):
    meta = tmp_path / "meta"
    meta.mkdir()
    info = {"fps": 15, "features": {}, "data_path": "data/{episode_index}.parquet"}
    (meta / "info.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(info, indent=2).replace("\n", "\r\n").encode())
    assert read_info(tmp_path) == info
    rows = [{"episode_index": 0, "length": 40, "tasks": ["stack"]}]
    assert read_jsonl(write(meta / "episodes.jsonl", rows, bom=True, newline="\r\n"), ("episode_index",)) == rows
    (meta / "info.json").write_bytes(json.dumps({**info, "robot": "bra\xe7o"}, ensure_ascii=False).encode("cp1252"))
    with pytest.raises(DatasetFormatError, match=r"info\.json:1: not UTF-8 text \(byte 0xe7\)"):
        read_info(tmp_path)
