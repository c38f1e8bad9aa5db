"""Names, path templates and small helpers of the LeRobot v3.0 layout.

Kept in one place so the writer and the reader cannot drift apart. Values follow what LeRobot
writes for v3.0 datasets (``codebase_version`` "v3.0", chunk/file path templates, default
per-frame features).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_DIR = "meta/episodes"
CHUNK_FILE = "chunk-{chunk_index:03d}/file-{file_index:03d}"
EPISODES_PATH = EPISODES_DIR + "/" + CHUNK_FILE + ".parquet"
DATA_PATH = "data/" + CHUNK_FILE + ".parquet"
VIDEO_PATH = "videos/{video_key}/" + CHUNK_FILE + ".mp4"
CHUNKS_SIZE = 1000  # files per chunk folder
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500

STATE_KEY = "observation.state"
ACTION_KEY = "action"
# Per-frame bookkeeping columns every LeRobot dataset carries.
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
# Columns of meta/episodes/*.parquet that locate an episode (besides per-video columns).
EPISODE_COLUMNS = ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                   "dataset_from_index", "dataset_to_index")
VIDEO_COLUMNS = ("chunk_index", "file_index", "from_timestamp", "to_timestamp")


def video_column(key: str, part: str) -> str:
    return f"videos/{key}/{part}"


def frame_columns(states: np.ndarray, actions: np.ndarray, fps: int, episode_index: int,
                  first_index: int, task_index: int) -> dict[str, np.ndarray]:
    """The per-frame columns of one episode, as both LeRobot layouts store them."""
    n = len(states)
    frame_index = np.arange(n, dtype=np.int64)
    return {
        STATE_KEY: np.asarray(states, np.float32), ACTION_KEY: np.asarray(actions, np.float32),
        "timestamp": (frame_index / fps).astype(np.float32), "frame_index": frame_index,
        "episode_index": np.full(n, episode_index, np.int64),
        "index": np.arange(first_index, first_index + n, dtype=np.int64),
        "task_index": np.full(n, task_index, np.int64),
    }


def next_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) after this one: a chunk folder holds at most chunks_size files."""
    if file_index + 1 >= chunks_size:
        return chunk_index + 1, 0
    return chunk_index, file_index + 1


def feature_stats(values: np.ndarray) -> dict[str, list]:
    """min/max/mean/std/count over axis 0, as LeRobot stores them (lists, count as [n])."""
    v = values.reshape(len(values), -1).astype(np.float64)
    return {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
            "std": v.std(0).tolist(), "count": [int(len(v))]}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False) + "\n", encoding="utf-8")
