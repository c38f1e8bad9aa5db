"""What the v2.1 and v3.0 readers share: info.json parsing, per-frame columns, camera frames.

The two layouts differ only in where an episode lives (one parquet/mp4 per episode in v2.1,
row and timestamp ranges inside shared files in v3.0), so a subclass answers two questions,
``_episode_rows`` (the episode's rows of its data file) and ``video_range`` (the mp4 and the
time span of one camera), and everything downstream reads both layouts through this class.
Every failure to read a file becomes a DatasetFormatError that names the file, the episode and
the column or camera, so a corrupt input stops a run with a message instead of a traceback.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import textio
from ..errors import DatasetFormatError
from ..video import VideoCursor

INFO_PATH = "meta/info.json"


def read_info(root: Path) -> dict:
    path = Path(root) / INFO_PATH
    if not path.is_file():
        raise DatasetFormatError(f"{path} not found: {root} is not a LeRobot dataset")
    info = textio.read_json(path, DatasetFormatError)
    if not isinstance(info, dict):
        raise DatasetFormatError(f"{path}: must hold a JSON object, got {type(info).__name__}")
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise DatasetFormatError(f"{path}: missing field {key!r}")
    return info


def read_parquet(path: Path, what: str) -> pa.Table:
    """pq.read_table with an error that says which file and what it was needed for."""
    if not path.is_file():
        raise DatasetFormatError(f"{what}: {path} not found")
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetFormatError(f"{what}: cannot read {path} (truncated or not parquet?): "
                                 f"{exc}") from None


def column_2d(col: pa.ChunkedArray | pa.Array, name: str, where: str) -> np.ndarray:
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


class LeRobotDatasetBase(ABC):
    """Sequential and random access to the episodes of a LeRobot dataset at ``root``."""

    layout = "?"

    def __init__(self, root: Path, info: dict):
        self.root = Path(root)
        self.info = info
        fps = info["fps"]
        self.fps = int(fps) if float(fps).is_integer() else float(fps)
        self.features: dict = info["features"]
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.episodes: dict = {}  # episode_index -> object with .length and .tasks
        self._cursors: dict[str, tuple[Path, VideoCursor]] = {}

    # ---- what a layout must provide -----------------------------------------------------
    @abstractmethod
    def _episode_rows(self, episode_index: int) -> tuple[pa.Table, Path]:
        """The rows of one episode (any order) and the file they came from."""

    @abstractmethod
    def video_range(self, episode_index: int, key: str) -> tuple[Path, float, float]:
        """(mp4 path, from_timestamp, to_timestamp) of one camera of one episode."""

    @abstractmethod
    def tasks(self) -> dict[int, str]:
        """task_index -> task string."""

    @abstractmethod
    def meta_files(self) -> list[Path]:
        """The small metadata files that describe the dataset (hashed into build keys)."""

    # ---- shared ---------------------------------------------------------------------------
    def feature_names(self, key: str) -> list[str] | None:
        return self.features.get(key, {}).get("names")

    def episode_table(self, episode_index: int) -> tuple[pa.Table, Path]:
        """Rows of one episode ordered by frame_index; the row count is checked."""
        if episode_index not in self.episodes:
            raise DatasetFormatError(f"{self.root}: no episode {episode_index}")
        table, path = self._episode_rows(episode_index)
        length = self.episodes[episode_index].length
        if table.num_rows != length:
            raise DatasetFormatError(
                f"episode {episode_index}: {path} holds {table.num_rows} rows but the episode "
                f"metadata says length {length}")
        if "frame_index" in table.column_names:
            order = np.argsort(table["frame_index"].to_numpy(), kind="stable")
            table = table.take(pa.array(order))
        return table, path

    def read_columns(self, episode_index: int, keys: list[str]) -> dict[str, np.ndarray]:
        """Per-frame columns of one episode, ordered by frame_index: key -> [T, D] arrays."""
        table, path = self.episode_table(episode_index)
        out = {}
        for key in keys:
            if key not in table.column_names:
                raise DatasetFormatError(f"episode {episode_index}: {path} has no column {key!r}")
            out[key] = column_2d(table[key], key, f"episode {episode_index}: {path}")
        return out

    def read_frames(self, episode_index: int, key: str) -> np.ndarray:
        """Decoded RGB frames of one camera for one episode: uint8 [T, H, W, 3]."""
        path, from_ts, to_ts = self.video_range(episode_index, key)
        where = f"episode {episode_index}, camera {key!r}"
        held = self._cursors.get(key)
        try:
            if held is None or held[0] != path:
                if held is not None:
                    held[1].close()
                    del self._cursors[key]
                held = (path, VideoCursor(path))
                self._cursors[key] = held
            return held[1].read(from_ts, to_ts, float(self.fps))
        except DatasetFormatError as exc:
            raise DatasetFormatError(f"{where}: {exc}") from None
        except (av.error.FFmpegError, OSError, ValueError) as exc:
            # A decoder error leaves the cursor in an unknown state: drop it.
            self._cursors.pop(key, None)
            raise DatasetFormatError(f"{where}: cannot decode video {path} "
                                     f"(corrupt or truncated?): {exc}") from None

    def close(self) -> None:
        for _, cursor in self._cursors.values():
            cursor.close()
        self._cursors = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
