"""Read a LeRobot v3.0 dataset: episode metadata, per-frame columns, camera frames.

Relies only on what the v3.0 layout promises: ``info.json`` path templates, the per-episode
rows in ``meta/episodes`` and the per-frame ``episode_index``/``frame_index`` columns. One data
file is cached at a time and each camera keeps a forward video cursor (see ``base``), so an
in-order pass is cheap while random access still works (more slowly).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from ..errors import DatasetFormatError
from . import layout as L
from .base import LeRobotDatasetBase, read_info, read_parquet


@dataclass(frozen=True)
class VideoSpan:
    chunk_index: int
    file_index: int
    from_timestamp: float
    to_timestamp: float


@dataclass(frozen=True)
class EpisodeMeta:
    episode_index: int
    length: int
    tasks: tuple[str, ...]
    data_chunk_index: int
    data_file_index: int
    dataset_from_index: int
    dataset_to_index: int
    videos: dict[str, VideoSpan] = field(default_factory=dict)


class LeRobotV3Dataset(LeRobotDatasetBase):
    """Random and sequential access to the episodes of a v3.0 dataset at ``root``."""

    layout = "v3.0"

    def __init__(self, root: Path, info: dict | None = None):
        info = info if info is not None else read_info(root)
        super().__init__(root, info)
        version = str(info.get("codebase_version", "?"))
        if not version.startswith("v3."):
            raise DatasetFormatError(f"{self.root / L.INFO_PATH}: codebase_version {version!r} "
                                     "is not v3.x")
        self.episodes = self._load_episodes()
        self._table_key: tuple[int, int] | None = None
        self._table: pa.Table | None = None
        self._table_eps: np.ndarray | None = None

    def _load_episodes(self) -> dict[int, EpisodeMeta]:
        files = sorted((self.root / L.EPISODES_DIR).glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetFormatError(f"no episode metadata under {self.root / L.EPISODES_DIR}")
        episodes: dict[int, EpisodeMeta] = {}
        needed = list(L.EPISODE_COLUMNS) + [L.video_column(k, p) for k in self.video_keys
                                            for p in L.VIDEO_COLUMNS]
        for path in files:
            table = read_parquet(path, "episode metadata")
            missing = [c for c in needed if c not in table.column_names]
            if missing:
                raise DatasetFormatError(f"{path}: missing column(s) {', '.join(missing)}")
            for row in table.select(needed).to_pylist():
                videos = {k: VideoSpan(int(row[L.video_column(k, "chunk_index")]),
                                       int(row[L.video_column(k, "file_index")]),
                                       float(row[L.video_column(k, "from_timestamp")]),
                                       float(row[L.video_column(k, "to_timestamp")]))
                          for k in self.video_keys}
                tasks = row["tasks"]
                ep = EpisodeMeta(int(row["episode_index"]), int(row["length"]),
                                 tuple(tasks) if isinstance(tasks, list) else (str(tasks),),
                                 int(row["data/chunk_index"]), int(row["data/file_index"]),
                                 int(row["dataset_from_index"]), int(row["dataset_to_index"]),
                                 videos)
                episodes[ep.episode_index] = ep
        return dict(sorted(episodes.items()))

    def tasks(self) -> dict[int, str]:
        """task_index -> task string, from meta/tasks.parquet."""
        path = self.root / L.TASKS_PATH
        read_parquet(path, "task table")  # a readable-file check with a clear error
        df = pd.read_parquet(path)
        if "task" in df.columns:  # some writers keep the task as a column, not the index
            return {int(i): str(t) for t, i in zip(df["task"], df["task_index"])}
        return {int(i): str(t) for t, i in zip(df.index, df["task_index"])}

    def meta_files(self) -> list[Path]:
        meta = self.root / "meta"
        return sorted(p for p in meta.rglob("*") if p.is_file())

    def _episode_rows(self, episode_index: int) -> tuple[pa.Table, Path]:
        ep = self.episodes[episode_index]
        loc = (ep.data_chunk_index, ep.data_file_index)
        path = self.root / self.info["data_path"].format(chunk_index=loc[0], file_index=loc[1])
        if self._table_key != loc:
            self._table_key = None
            table = read_parquet(path, f"episode {episode_index}: data file")
            if "episode_index" not in table.column_names:
                raise DatasetFormatError(f"{path}: missing column 'episode_index'")
            self._table, self._table_eps = table, table["episode_index"].to_numpy()
            self._table_key = loc
        rows = np.flatnonzero(self._table_eps == episode_index)
        return self._table.take(pa.array(rows)), path

    def video_range(self, episode_index: int, key: str) -> tuple[Path, float, float]:
        span = self.episodes[episode_index].videos[key]
        template = self.info.get("video_path") or L.VIDEO_PATH
        path = self.root / template.format(video_key=key, chunk_index=span.chunk_index,
                                           file_index=span.file_index)
        return path, span.from_timestamp, span.to_timestamp

    def video_path(self, episode_index: int, key: str) -> Path:
        return self.video_range(episode_index, key)[0]
