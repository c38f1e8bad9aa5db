"""Input problems stop build-shards with an error naming the episode and event, a non-zero
exit code, and no half-written output."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools.errors import EventError
from data_tools.shards import build_shards

EPISODES = "meta/episodes/chunk-000/file-000.parquet"
DATA = "data/chunk-000/file-000.parquet"


@pytest.fixture
def bad(dt_tiny, tmp_path):
    """A private copy of the tiny dataset, to corrupt."""
    return shutil.copytree(dt_tiny, tmp_path / "bad")


def _rewrite_events(root, change):
    lines = [json.loads(x) for x in (root / "events.jsonl").read_text().splitlines()]
    lines = change(lines)
    (root / "events.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def _l1(root, episode, index):
    return next(json.loads(x) for x in (root / "events.jsonl").read_text().splitlines()
                if json.loads(x)["level"] == "L1" and json.loads(x)["episode_index"] == episode
                and json.loads(x)["index"] == index)


def _fails(root, tmp_path, dt_cli, *patterns, level="L1"):
    """Both the library and the CLI refuse, naming what is wrong; nothing is left behind."""
    out = tmp_path / "out"
    with pytest.raises(EventError) as err:
        build_shards(root, out, level=level, progress=False)
    for p in patterns:
        assert p in str(err.value), f"{p!r} not in {err.value}"
    proc = dt_cli("build-shards", "--src", root, "--out", out, "--level", level, "--quiet")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    for p in patterns:
        assert p in proc.stderr
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []
    return proc.stderr


def test_missing_events_file(bad, tmp_path, dt_cli):
    (bad / "events.jsonl").unlink()
    _fails(bad, tmp_path, dt_cli, "events.jsonl not found")


def test_span_outside_the_episode(bad, tmp_path, dt_cli):
    last = max((e for e in map(json.loads, (bad / "events.jsonl").read_text().splitlines())
                if e["episode_index"] == 2 and e["level"] == "L1"), key=lambda e: e["index"])

    def stretch(lines):
        for e in lines:
            if (e["episode_index"], e["level"], e["index"]) == (2, "L1", last["index"]):
                e["end"] += 5
        return lines
    _rewrite_events(bad, stretch)
    _fails(bad, tmp_path, dt_cli, "episode 2", f"L1 event {last['index']}", "outside the episode")


def test_nan_in_actions(bad, tmp_path, dt_cli):
    ev = _l1(bad, 1, 2)
    frame = ev["start"] + 1
    table = pq.read_table(bad / DATA)
    actions = np.stack(table["action"].to_numpy(zero_copy_only=False)).astype(np.float32)
    row = np.flatnonzero((table["episode_index"].to_numpy() == 1)
                         & (table["frame_index"].to_numpy() == frame))[0]
    actions[row, 0] = np.nan
    col = pa.FixedSizeListArray.from_arrays(pa.array(actions.reshape(-1)), 4)
    pq.write_table(table.set_column(table.column_names.index("action"), "action", col), bad / DATA)
    _fails(bad, tmp_path, dt_cli, "episode 1", "L1 event 2", f"frame {frame}", "NaN")


def test_video_shorter_than_actions(bad, tmp_path, dt_cli):
    eps = pd.read_parquet(bad / EPISODES)
    col = "videos/observation.images.wrist/to_timestamp"
    eps.loc[eps.episode_index == 3, col] -= 0.1  # one frame at 10 fps
    eps.to_parquet(bad / EPISODES)
    err = _fails(bad, tmp_path, dt_cli, "episode 3", "L1 event 0", "observation.images.wrist")
    assert "frames" in err and "rows" in err


def test_unknown_level_on_the_command_line(dt_tiny, tmp_path, dt_cli):
    proc = dt_cli("build-shards", "--src", dt_tiny, "--out", tmp_path / "o", "--level", "L7")
    assert proc.returncode == 1 and "unknown caption level 'L7'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_unknown_level_in_events_file(bad, tmp_path, dt_cli):
    def relabel(lines):
        for e in lines:
            if (e["episode_index"], e["level"], e["index"]) == (4, "L1", 1):
                e["level"] = "L9"
        return lines
    _rewrite_events(bad, relabel)
    _fails(bad, tmp_path, dt_cli, "episode 4", "event 1", "unknown level 'L9'")


def test_level_without_events(dt_tiny, tmp_path, dt_cli):
    _fails(dt_tiny, tmp_path, dt_cli, "no L0 events", level="L0")


def test_failed_rebuild_keeps_previous_output(dt_tiny, bad, tmp_path):
    out = tmp_path / "kept"
    build_shards(dt_tiny, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (bad / "events.jsonl").write_text('{"episode_index": 0, "level": "L1"}\n')
    with pytest.raises(EventError, match="missing field"):
        build_shards(bad, out, progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
