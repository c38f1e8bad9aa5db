"""Read a LeRobot v3.0 dataset: episode metadata, per-frame columns, camera frames.

Meant for our synthetic datasets and for real ones alike, so it relies only on what the v3.0
layout promises: ``info.json`` path templates, the per-episode rows in ``meta/episodes`` and
the per-frame ``episode_index``/``frame_index`` columns. One data file is cached at a time and
each camera keeps a forward video cursor, so an in-order pass is cheap while random access
still works (more slowly). Anything missing or inconsistent raises DatasetFormatError naming
the file and episode.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatasetFormatError
from ..video import VideoCursor
from . import layout as L


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


def _column_2d(col: pa.ChunkedArray | pa.Array, name: str, where: str) -> np.ndarray:
    """A list/fixed-size-list column as a 2-D numpy array (scalars become [N, 1])."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_list(arr.type):
        return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        offsets = np.asarray(arr.offsets)
        widths = np.diff(offsets)
        if len(widths) and (widths != widths[0]).any():
            raise DatasetFormatError(f"{where}: column {name!r} has rows of different lengths")
        width = int(widths[0]) if len(widths) else 0
        return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), width)
    return arr.to_numpy(zero_copy_only=False).reshape(len(arr), 1)


class LeRobotV3Dataset:
    """Random and sequential access to the episodes of a v3.0 dataset at ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        info_path = self.root / L.INFO_PATH
        if not info_path.is_file():
            raise DatasetFormatError(f"{info_path} not found: {self.root} is not a LeRobot dataset")
        self.info = json.loads(info_path.read_text(encoding="utf-8"))
        version = str(self.info.get("codebase_version", "?"))
        if not version.startswith("v3."):
            raise DatasetFormatError(f"{info_path}: codebase_version {version!r} is not v3.x "
                                     "(older layouts need converting first)")
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise DatasetFormatError(f"{info_path}: missing field {key!r}")
        fps = self.info["fps"]
        self.fps = int(fps) if float(fps).is_integer() else float(fps)
        self.features: dict = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.episodes = self._load_episodes()
        self._table_key: tuple[int, int] | None = None
        self._table: pa.Table | None = None
        self._table_eps: np.ndarray | None = None
        self._cursors: dict[str, tuple[Path, VideoCursor]] = {}

    def _load_episodes(self) -> dict[int, EpisodeMeta]:
        files = sorted((self.root / L.EPISODES_DIR).glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetFormatError(f"no episode metadata under {self.root / L.EPISODES_DIR}")
        episodes: dict[int, EpisodeMeta] = {}
        for path in files:
            table = pq.read_table(path)
            needed = list(L.EPISODE_COLUMNS) + [L.video_column(k, p) for k in self.video_keys
                                                for p in L.VIDEO_COLUMNS]
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
        df = pd.read_parquet(self.root / L.TASKS_PATH)
        if "task" in df.columns:  # some writers keep the task as a column, not the index
            return {int(i): str(t) for t, i in zip(df["task"], df["task_index"])}
        return {int(i): str(t) for t, i in zip(df.index, df["task_index"])}

    def feature_names(self, key: str) -> list[str] | None:
        return self.features.get(key, {}).get("names")

    def _data_file(self, ep: EpisodeMeta) -> tuple[pa.Table, np.ndarray, Path]:
        loc = (ep.data_chunk_index, ep.data_file_index)
        path = self.root / self.info["data_path"].format(chunk_index=loc[0], file_index=loc[1])
        if self._table_key != loc:
            if not path.is_file():
                raise DatasetFormatError(f"episode {ep.episode_index}: data file {path} not found")
            self._table = pq.read_table(path)
            if "episode_index" not in self._table.column_names:
                raise DatasetFormatError(f"{path}: missing column 'episode_index'")
            self._table_eps = self._table["episode_index"].to_numpy()
            self._table_key = loc
        return self._table, self._table_eps, path

    def read_columns(self, episode_index: int, keys: list[str]) -> dict[str, np.ndarray]:
        """Per-frame columns of one episode, ordered by frame_index: key -> [T, D] arrays."""
        ep = self.episodes[episode_index]
        table, eps, path = self._data_file(ep)
        rows = np.flatnonzero(eps == episode_index)
        if len(rows) != ep.length:
            raise DatasetFormatError(f"episode {episode_index}: {path} holds {len(rows)} rows "
                                     f"but meta/episodes says length {ep.length}")
        sub = table.take(pa.array(rows))
        if "frame_index" in sub.column_names:
            order = np.argsort(sub["frame_index"].to_numpy(), kind="stable")
            sub = sub.take(pa.array(order))
        out = {}
        for key in keys:
            if key not in sub.column_names:
                raise DatasetFormatError(f"{path}: missing column {key!r}")
            out[key] = _column_2d(sub[key], key, str(path))
        return out

    def video_path(self, episode_index: int, key: str) -> Path:
        span = self.episodes[episode_index].videos[key]
        template = self.info.get("video_path") or L.VIDEO_PATH
        return self.root / template.format(video_key=key, chunk_index=span.chunk_index,
                                           file_index=span.file_index)

    def read_frames(self, episode_index: int, key: str) -> np.ndarray:
        """Decoded RGB frames of one camera for one episode: uint8 [T, H, W, 3]."""
        span = self.episodes[episode_index].videos[key]
        path = self.video_path(episode_index, key)
        held = self._cursors.get(key)
        if held is None or held[0] != path:
            if held is not None:
                held[1].close()
            held = (path, VideoCursor(path))
            self._cursors[key] = held
        return held[1].read(span.from_timestamp, span.to_timestamp, float(self.fps))

    def close(self) -> None:
        for _, cursor in self._cursors.values():
            cursor.close()
        self._cursors = {}

    def __enter__(self) -> "LeRobotV3Dataset":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
