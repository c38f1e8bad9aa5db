"""Write a LeRobot v3.0 dataset episode by episode.

Video frames are encoded as each episode arrives (one open MP4 per camera) and per-frame rows
are buffered until their data file is full, so memory holds at most one data file. Files roll
over after ``frames_per_file`` frames rather than after N megabytes as LeRobot does: a frame
count is reproducible and easy to test, and either way an episode never straddles two files.
Per-episode and global statistics cover the numeric features only (no image statistics).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..video import CODECS, VideoEncoder
from . import layout as L


def _fixed_list(values: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


class LeRobotV3Writer:
    """Collects episodes (state, action, camera frames, task) into the v3.0 layout at ``root``."""

    def __init__(self, root: Path, fps: int, state_names: list[str], action_names: list[str],
                 video_keys: list[str], height: int, width: int, vcodec: str = "h264",
                 robot_type: str | None = None, frames_per_file: int = 100_000,
                 chunks_size: int = L.CHUNKS_SIZE):
        self.root = Path(root)
        self.fps, self.vcodec = fps, vcodec
        self.state_names, self.action_names = list(state_names), list(action_names)
        self.video_keys, self.height, self.width = list(video_keys), height, width
        self.robot_type, self.frames_per_file, self.chunks_size = robot_type, frames_per_file, chunks_size
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict] = []
        self.total_frames = 0
        self._loc = (0, 0)  # (chunk, file) currently being filled, shared by data and videos
        self._rows: list[dict[str, np.ndarray]] = []
        self._file_frames = 0
        self._encoders: dict[str, VideoEncoder] = {}
        self._all_numeric: dict[str, list[np.ndarray]] = {}

    def _open_encoders(self) -> None:
        chunk, file = self._loc
        for key in self.video_keys:
            path = self.root / L.VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            self._encoders[key] = VideoEncoder(path, self.fps, self.width, self.height, self.vcodec)

    def _flush_file(self) -> None:
        if not self._rows:
            return
        cols = {k: np.concatenate([r[k] for r in self._rows]) for k in self._rows[0]}
        table = pa.table({
            L.STATE_KEY: _fixed_list(cols[L.STATE_KEY]),
            L.ACTION_KEY: _fixed_list(cols[L.ACTION_KEY]),
            "timestamp": pa.array(cols["timestamp"], pa.float32()),
            "frame_index": pa.array(cols["frame_index"], pa.int64()),
            "episode_index": pa.array(cols["episode_index"], pa.int64()),
            "index": pa.array(cols["index"], pa.int64()),
            "task_index": pa.array(cols["task_index"], pa.int64()),
        })
        chunk, file = self._loc
        path = self.root / L.DATA_PATH.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for enc in self._encoders.values():
            enc.close()
        self._encoders = {}
        self._rows, self._file_frames = [], 0
        self._loc = L.next_file(*self._loc, self.chunks_size)

    def add_episode(self, states: np.ndarray, actions: np.ndarray,
                    videos: dict[str, np.ndarray], task: str) -> int:
        """Append one episode; returns its episode_index. videos: key -> uint8 [T, H, W, 3]."""
        n = len(states)
        if len(actions) != n or any(len(v) != n for v in videos.values()):
            raise ValueError("states, actions and every video must have the same length")
        if sorted(videos) != sorted(self.video_keys):
            raise ValueError(f"expected videos for {self.video_keys}, got {sorted(videos)}")
        if self._file_frames and self._file_frames + n > self.frames_per_file:
            self._flush_file()
        if not self._encoders:
            self._open_encoders()
        ep = len(self.episode_rows)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        row = L.frame_columns(states, actions, self.fps, ep, self.total_frames, task_index)
        chunk, file = self._loc
        meta = {"episode_index": ep, "tasks": [task], "length": n,
                "data/chunk_index": chunk, "data/file_index": file,
                "dataset_from_index": self.total_frames, "dataset_to_index": self.total_frames + n}
        for key in self.video_keys:
            enc = self._encoders[key]
            meta[L.video_column(key, "chunk_index")] = chunk
            meta[L.video_column(key, "file_index")] = file
            meta[L.video_column(key, "from_timestamp")] = enc.frames / self.fps
            enc.add(videos[key])
            meta[L.video_column(key, "to_timestamp")] = enc.frames / self.fps
        for key, values in row.items():
            for stat, v in L.feature_stats(values).items():
                meta[f"stats/{key}/{stat}"] = v
            self._all_numeric.setdefault(key, []).append(values)
        meta["meta/episodes/chunk_index"], meta["meta/episodes/file_index"] = 0, 0
        self.episode_rows.append(meta)
        self._rows.append(row)
        self._file_frames += n
        self.total_frames += n
        return ep

    def _features(self) -> dict:
        feats = {
            L.STATE_KEY: {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names},
            L.ACTION_KEY: {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names},
        }
        for key in self.video_keys:
            feats[key] = {
                "dtype": "video", "shape": [self.height, self.width, 3],
                "names": ["height", "width", "channels"],
                "info": {"video.height": self.height, "video.width": self.width,
                         "video.codec": CODECS[self.vcodec][1], "video.pix_fmt": "yuv420p",
                         "video.is_depth_map": False, "video.fps": self.fps,
                         "video.channels": 3, "has_audio": False},
            }
        feats.update({k: dict(v) for k, v in L.DEFAULT_FEATURES.items()})
        return feats

    def finish(self) -> dict:
        """Write the remaining data file and all metadata; returns info.json's content."""
        self._flush_file()
        n_eps = len(self.episode_rows)
        info = {
            "codebase_version": L.CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": n_eps, "total_frames": self.total_frames,
            "total_tasks": len(self.tasks), "chunks_size": self.chunks_size,
            "data_files_size_in_mb": L.DATA_FILES_SIZE_IN_MB,
            "video_files_size_in_mb": L.VIDEO_FILES_SIZE_IN_MB,
            "fps": self.fps, "splits": {"train": f"0:{n_eps}"},
            "data_path": L.DATA_PATH, "video_path": L.VIDEO_PATH, "features": self._features(),
        }
        L.write_json(self.root / L.INFO_PATH, info)
        stats = {k: L.feature_stats(np.concatenate(v)) for k, v in self._all_numeric.items()}
        L.write_json(self.root / L.STATS_PATH, stats)
        tasks = pd.DataFrame({"task_index": list(self.tasks.values())},
                             index=pd.Index(list(self.tasks), name="task"))
        tasks.to_parquet(self.root / L.TASKS_PATH)
        path = self.root / L.EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(self.episode_rows), path)
        return info
