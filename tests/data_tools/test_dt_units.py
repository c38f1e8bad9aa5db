"""Small units: area resize, deterministic tar writer, events parser and nesting checks."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from data_tools.errors import EventError
from data_tools.events import Event, check_nesting, check_spans, read_events
from sim.imageops import resize_area
from data_tools.tario import DeterministicTarWriter


def test_resize_area_is_box_average_and_keeps_flat_images():
    x = np.random.default_rng(0).integers(0, 256, (3, 2, 64, 64, 3)).astype(np.uint8)
    y = resize_area(x, 32)
    ref = x.reshape(3, 2, 32, 2, 32, 2, 3).astype(np.float64).mean(axis=(3, 5))
    assert y.shape == (3, 2, 32, 32, 3) and y.dtype == np.uint8
    assert np.abs(y - ref).max() <= 0.5
    flat = np.full((1, 64, 64, 3), 77, np.uint8)
    assert (resize_area(flat, (40, 24)) == 77).all()


def test_tar_writer_is_deterministic_and_rejects_dotted_keys():
    def build():
        buf = io.BytesIO()
        w = DeterministicTarWriter(buf)
        w.write_sample("ep000001_L1_000", {"json": b"{}", "actions.npy": b"abc"})
        w.close()
        return buf.getvalue()
    assert build() == build()
    with tarfile.open(fileobj=io.BytesIO(build())) as tar:
        assert tar.getnames() == ["ep000001_L1_000.json", "ep000001_L1_000.actions.npy"]
    with pytest.raises(ValueError, match="must not contain"):
        DeterministicTarWriter(io.BytesIO()).write_sample("a.b", {"json": b""})


@pytest.mark.parametrize("line,message", [
    ("not json", "not valid JSON"),
    ('{"episode_index": 1, "level": "L1", "index": 0, "start": 0, "caption": "x"}', "missing field(s) end"),
    ('{"episode_index": 1, "level": "L1", "index": 0, "start": 4, "end": 4, "caption": "x"}', "empty or reversed"),
    ('{"episode_index": 1, "level": "L1", "index": "0", "start": 0, "end": 4, "caption": "x"}', "must be integers"),
])
def test_events_parser_names_the_line(tmp_path, line, message):
    path = tmp_path / "events.jsonl"
    path.write_text('{"episode_index": 1, "level": "L3", "index": 0, "start": 0, "end": 9, "caption": "t"}\n'
                    + line + "\n")
    with pytest.raises(EventError, match="events.jsonl:2") as err:
        read_events(path)
    assert message in str(err.value)


def test_nesting_and_span_checks_name_the_event():
    l3 = Event(0, "L3", 0, 0, 20, "task")
    l2 = Event(0, "L2", 0, 0, 10, "pick up the red cube", 0)
    inside = Event(0, "L1", 0, 0, 6, "reach for the red cube", 0)
    check_nesting([l3, l2, inside])
    with pytest.raises(EventError, match="not inside its parent L2 event 0"):
        check_nesting([l3, l2, Event(0, "L1", 0, 5, 12, "grasp", 0)])
    with pytest.raises(EventError, match="overlaps L1 event 0"):
        check_nesting([l3, l2, inside, Event(0, "L1", 1, 5, 9, "grasp", 0)])
    with pytest.raises(EventError, match="episode 0, L1 event 0 .* outside the episode"):
        check_spans([inside], {0: 4})
    with pytest.raises(EventError, match="no episode 0"):
        check_spans([inside], {1: 40})


@pytest.mark.parametrize("vcodec", ["h264", "av1"])
def test_encoding_leaves_the_process_scheduling_as_it_was(tmp_path, vcodec):
    """SVT-AV1 run as root switches the thread that opens it to real-time SCHED_FIFO 99, which
    every process forked later inherits (ranks that then busy-wait starve the machine)."""
    import os

    from data_tools.video import VideoEncoder

    before = (os.sched_getscheduler(0), os.sched_getparam(0))
    enc = VideoEncoder(tmp_path / f"v_{vcodec}.mp4", fps=10, width=32, height=32, vcodec=vcodec)
    enc.add(np.zeros((3, 32, 32, 3), np.uint8))
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
    enc.close()
    assert (os.sched_getscheduler(0), os.sched_getparam(0)) == before
