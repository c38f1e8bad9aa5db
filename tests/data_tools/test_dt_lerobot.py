"""The LeRobot v3.0 layout written by synth, checked against the published format and with an
independent PyAV decode of the concatenated videos."""

from __future__ import annotations

import json

import av
import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from data_tools.lerobot import LeRobotV3Dataset
from data_tools.synthworld import simulate_episode

VIDEO_KEYS = ["observation.images.overhead", "observation.images.wrist"]


def test_info_json_fields(dt_tiny):
    info = json.loads((dt_tiny / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["fps"] == 10 and info["total_episodes"] == 5 and info["chunks_size"] == 1000
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    assert feats["observation.state"]["shape"] == [8] and len(feats["observation.state"]["names"]) == 8
    assert feats["action"]["shape"] == [4] and feats["action"]["dtype"] == "float32"
    for key in VIDEO_KEYS:
        f = feats[key]
        assert f["dtype"] == "video" and f["shape"] == [64, 64, 3]
        assert f["info"]["video.codec"] == "h264" and f["info"]["video.pix_fmt"] == "yuv420p"
        assert f["info"]["video.fps"] == 10
    for key, dtype in [("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                       ("index", "int64"), ("task_index", "int64")]:
        assert feats[key]["dtype"] == dtype and feats[key]["shape"] == [1]
    data = pq.read_table(dt_tiny / "data/chunk-000/file-000.parquet")
    assert info["total_frames"] == data.num_rows
    assert set(data.column_names) == {"observation.state", "action", "timestamp", "frame_index",
                                      "episode_index", "index", "task_index"}
    assert data["index"].to_pylist() == list(range(data.num_rows))


def test_episodes_and_tasks_parquet(dt_tiny):
    eps = pd.read_parquet(dt_tiny / "meta/episodes/chunk-000/file-000.parquet")
    needed = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
              "dataset_from_index", "dataset_to_index",
              "meta/episodes/chunk_index", "meta/episodes/file_index"]
    for key in VIDEO_KEYS:
        needed += [f"videos/{key}/{p}" for p in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
    assert not set(needed) - set(eps.columns)
    assert (eps["dataset_to_index"] - eps["dataset_from_index"] == eps["length"]).all()
    assert (eps["dataset_from_index"].iloc[1:].values == eps["dataset_to_index"].iloc[:-1].values).all()
    tasks = pd.read_parquet(dt_tiny / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"]
    data = pd.read_parquet(dt_tiny / "data/chunk-000/file-000.parquet")
    for _, row in eps.iterrows():
        rows = data[data.episode_index == row.episode_index]
        assert len(rows) == row.length
        assert tasks.loc[row.tasks[0], "task_index"] == rows.task_index.iloc[0]


def test_videos_decode_to_each_episode_at_its_offsets(dt_tiny, dt_params):
    eps = pd.read_parquet(dt_tiny / "meta/episodes/chunk-000/file-000.parquet")
    for key in VIDEO_KEYS:
        with av.open(str(dt_tiny / f"videos/{key}/chunk-000/file-000.mp4")) as c:
            decoded = [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
        times = np.array([t for t, _ in decoded])
        frames = np.stack([f for _, f in decoded]).astype(np.float32)
        assert len(decoded) == eps.length.sum()
        for _, row in eps.iterrows():
            lo, hi = row[f"videos/{key}/from_timestamp"], row[f"videos/{key}/to_timestamp"]
            inside = np.flatnonzero((times >= lo - 0.05) & (times < hi - 0.05))
            assert len(inside) == row.length
            assert inside[0] == row.dataset_from_index  # videos and data rows line up
            # The frames at those offsets are this episode's: compare with a fresh simulation,
            # and check that a one-frame shift either way matches worse (lossy codec: no ==).
            sim = simulate_episode(int(row.episode_index), dt_params["seed"], 64, 10,
                                   dt_params["regrasp_prob"]).frames[key.split(".")[-1]]
            a, n = int(inside[0]), int(row.length)
            err = np.abs(frames[a:a + n] - sim).mean()
            early = np.abs(frames[a:a + n - 1] - sim[1:]).mean()
            late = np.abs(frames[a + 1:a + n] - sim[:-1]).mean()
            assert err < 6.0, f"{key} episode {row.episode_index}: mean abs error {err}"
            assert err < min(early, late), f"{key} episode {row.episode_index}: offset looks shifted"


def test_reader_handles_many_files_and_chunks(tmp_path, dt_make_dataset):
    root = dt_make_dataset(tmp_path / "multi", episodes=4, seed=1, frames_per_file=120)
    assert len(list((root / "data/chunk-000").glob("file-*.parquet"))) >= 2
    ds = LeRobotV3Dataset(root)
    single = LeRobotV3Dataset(dt_make_dataset(tmp_path / "single", episodes=4, seed=1))
    for ep, meta in ds.episodes.items():
        a = ds.read_columns(ep, ["action"])["action"]
        assert len(a) == meta.length
        np.testing.assert_array_equal(a, single.read_columns(ep, ["action"])["action"])
        for key in VIDEO_KEYS:
            assert ds.read_frames(ep, key).shape == (meta.length, 64, 64, 3)
    # Random access (backwards) gives the same frames as the in-order pass.
    last = max(ds.episodes)
    forward = ds.read_frames(last, VIDEO_KEYS[0])
    ds.read_frames(0, VIDEO_KEYS[0])
    np.testing.assert_array_equal(ds.read_frames(last, VIDEO_KEYS[0]), forward)


def test_av1_video_is_readable(tmp_path, dt_make_dataset):
    root = dt_make_dataset(tmp_path / "av1", episodes=2, seed=4, vcodec="av1")
    info = json.loads((root / "meta/info.json").read_text())
    assert info["features"][VIDEO_KEYS[1]]["info"]["video.codec"] == "av1"
    ds = LeRobotV3Dataset(root)
    for ep, meta in ds.episodes.items():
        assert ds.read_frames(ep, VIDEO_KEYS[1]).shape[0] == meta.length
