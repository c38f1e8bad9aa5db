"""Events from what LeRobot datasets carry (subtask_index + subtask table, timestamped
language rows), in both layouts, and the `events` verb that writes them out."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_tools.annotations import resolve_events
from data_tools.errors import DatasetFormatError
from data_tools.lerobot import open_dataset
from data_tools.shards import build_shards


def _spans(events, level):
    return sorted((e["episode_index"], e["start"], e["end"], e["caption"]) for e in events
                  if e["level"] == level)


def _as_dicts(events):
    return [dict(episode_index=e.episode_index, level=e.level, index=e.index, start=e.start,
                 end=e.end, caption=e.caption, parent=e.parent) for e in events]


@pytest.fixture
def v3_with_subtasks(dt_av1_pair, dt_events, tmp_path):
    """v3.0 copy whose L2 events live only in a subtask_index column + meta/subtasks.parquet;
    episode 0's last subtask is unlabelled (-1)."""
    root = shutil.copytree(dt_av1_pair["v3.0"], tmp_path / "v3sub")
    events = dt_events(root)
    (root / "events.jsonl").unlink()
    texts = sorted({e["caption"] for e in events if e["level"] == "L2"})
    ids = {t: i for i, t in enumerate(texts)}
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    eps, frames = table["episode_index"].to_numpy(), table["frame_index"].to_numpy()
    col = np.full(len(eps), -1, np.int64)
    last0 = max((e for e in events if e["level"] == "L2" and e["episode_index"] == 0),
                key=lambda e: e["index"])
    for e in events:
        if e["level"] == "L2" and e is not last0:
            col[(eps == e["episode_index"]) & (frames >= e["start"]) & (frames < e["end"])] = ids[e["caption"]]
    pq.write_table(table.append_column("subtask_index", pa.array(col)), path)
    pd.DataFrame({"subtask_index": list(ids.values())},
                 index=pd.Index(list(ids), name="subtask")).to_parquet(root / "meta/subtasks.parquet")
    return root, events, last0


def test_subtask_index_runs_become_l2_events(v3_with_subtasks):
    root, original, dropped = v3_with_subtasks
    with open_dataset(root) as ds:
        events, source = resolve_events(root, ds)
    got = _as_dicts(events)
    assert "events.jsonl not found" in source and "subtask_index" in source
    want = [s for s in _spans(original, "L2")
            if s != (0, dropped["start"], dropped["end"], dropped["caption"])]
    assert _spans(got, "L2") == want
    assert _spans(got, "L3") == _spans(original, "L3")  # from the episodes' tasks
    assert all(e["parent"] == 0 for e in got if e["level"] == "L2")
    # The same events at another level, by flag.
    with open_dataset(root) as ds:
        as_l1, _ = resolve_events(root, ds, subtask_level="L1")
    assert _spans(_as_dicts(as_l1), "L1") == want


def test_subtask_index_without_table_is_an_error(v3_with_subtasks):
    root, _, _ = v3_with_subtasks
    (root / "meta/subtasks.parquet").unlink()
    with open_dataset(root) as ds, pytest.raises(DatasetFormatError, match="episode 0.*subtasks"):
        resolve_events(root, ds)


def test_language_rows_become_l2_and_l1_events_in_v21(dt_av1_pair, dt_events, tmp_path):
    root = shutil.copytree(dt_av1_pair["v2.1"], tmp_path / "v21lang")
    original = dt_events(root)
    (root / "events.jsonl").unlink()
    row_type = pa.struct([("role", pa.string()), ("content", pa.string()), ("style", pa.string()),
                          ("timestamp", pa.float32()), ("camera", pa.string())])
    for path in sorted(root.glob("data/chunk-000/episode_*.parquet")):
        table = pq.read_table(path)
        ep = int(table["episode_index"][0].as_py())
        rows = [{"role": "assistant", "content": e["caption"], "camera": None,
                 "style": {"L2": "subtask", "L1": "motion"}[e["level"]],
                 "timestamp": e["start"] / 10.0}
                for e in original if e["episode_index"] == ep and e["level"] in ("L1", "L2")]
        rows.append({"role": "assistant", "content": "remember the bowl", "style": "memory",
                     "timestamp": 0.0, "camera": None})
        col = pa.array([rows] * table.num_rows, pa.list_(row_type))  # repeated on every frame
        pq.write_table(table.append_column("language_persistent", col), path)
    with open_dataset(root) as ds:
        events, _ = resolve_events(root, ds)
    got = _as_dicts(events)
    for level in ("L3", "L2", "L1"):
        assert _spans(got, level) == _spans(original, level), level
    parents = {(e["episode_index"], e["index"]): e["parent"] for e in original if e["level"] == "L1"}
    assert all(parents[(e["episode_index"], e["index"])] == e["parent"] for e in got if e["level"] == "L1")
    # build-shards uses the derived events directly
    index = build_shards(root, tmp_path / "shards", level="L1", progress=False)
    assert index["total_samples"] == len(_spans(original, "L1"))


def test_events_verb_writes_the_resolved_events(v3_with_subtasks, dt_cli, tmp_path):
    root, _, _ = v3_with_subtasks
    out = tmp_path / "ev.jsonl"
    proc = dt_cli("events", "--src", root, "--out", out)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert {e["level"] for e in lines} == {"L3", "L2"} and "subtask_index" in proc.stdout
    proc = dt_cli("validate", "--src", root, "--events", out)
    assert proc.returncode == 0 and "0 error(s)" in proc.stdout
