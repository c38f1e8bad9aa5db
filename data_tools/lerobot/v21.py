"""LeRobot v2.1 layout: one parquet and one mp4 per camera per episode, JSON-lines metadata.

::

    meta/info.json            codebase_version "v2.1", fps, features, chunks_size,
                              data_path   data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet
                              video_path  videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4
    meta/episodes.jsonl       {"episode_index", "tasks": [...], "length"} per episode
    meta/tasks.jsonl          {"task_index", "task"} per task
    meta/episodes_stats.jsonl {"episode_index", "stats": {feature: {min, max, mean, std, count}}}

``episode_chunk`` is ``episode_index // chunks_size``. Each episode's video starts at time 0, so
frame i of an episode sits at i / fps. The reader shares everything else with the v3.0 reader
(``base``); the writer exists so that tests and ``synth --layout v2.1`` can produce this layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import textio
from ..errors import DatasetFormatError
from ..video import CODECS, VideoEncoder
from . import layout as L
from .base import LeRobotDatasetBase, read_info, read_parquet

CODEBASE_VERSION = "v2.1"
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
EPISODES_PATH = "meta/episodes.jsonl"
TASKS_PATH = "meta/tasks.jsonl"
EPISODES_STATS_PATH = "meta/episodes_stats.jsonl"


@dataclass(frozen=True)
class EpisodeV21:
    episode_index: int
    length: int
    tasks: tuple[str, ...]


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise DatasetFormatError(f"{path} not found")
    rows = []
    for lineno, line in textio.lines(path, DatasetFormatError):
        row = textio.loads(line, f"{path}:{lineno}", DatasetFormatError)
        if not isinstance(row, dict):
            raise DatasetFormatError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise DatasetFormatError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    return rows


class LeRobotV21Dataset(LeRobotDatasetBase):
    layout = "v2.1"

    def __init__(self, root: Path, info: dict | None = None):
        info = info if info is not None else read_info(root)
        super().__init__(root, info)
        self.chunks_size = int(info.get("chunks_size", L.CHUNKS_SIZE))
        rows = read_jsonl(self.root / EPISODES_PATH, ("episode_index", "length"))
        self.episodes = {int(r["episode_index"]): EpisodeV21(
            int(r["episode_index"]), int(r["length"]), tuple(r.get("tasks") or ()))
            for r in sorted(rows, key=lambda r: r["episode_index"])}

    def _path(self, template: str, episode_index: int, **kw) -> Path:
        # total_episodes: some v2.0 datasets name files "train-{episode_index}-of-{total}".
        return self.root / template.format(episode_chunk=episode_index // self.chunks_size,
                                           episode_index=episode_index,
                                           total_episodes=self.info.get("total_episodes", 0), **kw)

    def _episode_rows(self, episode_index: int) -> tuple[pa.Table, Path]:
        path = self._path(self.info["data_path"], episode_index)
        return read_parquet(path, f"episode {episode_index}: data file"), path

    def video_range(self, episode_index: int, key: str) -> tuple[Path, float, float]:
        template = self.info.get("video_path") or VIDEO_PATH
        path = self._path(template, episode_index, video_key=key)
        return path, 0.0, self.episodes[episode_index].length / float(self.fps)

    def tasks(self) -> dict[int, str]:
        rows = read_jsonl(self.root / TASKS_PATH, ("task_index", "task"))
        return {int(r["task_index"]): str(r["task"]) for r in rows}

    def meta_files(self) -> list[Path]:
        return sorted(p for p in (self.root / "meta").rglob("*") if p.is_file())


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")


class LeRobotV21Writer:
    """Same interface as LeRobotV3Writer (add_episode, finish), v2.1 files."""

    def __init__(self, root: Path, fps: int, state_names: list[str], action_names: list[str],
                 video_keys: list[str], height: int, width: int, vcodec: str = "h264",
                 robot_type: str | None = None, chunks_size: int = L.CHUNKS_SIZE, **_ignored):
        self.root, self.fps, self.vcodec = Path(root), fps, vcodec
        self.state_names, self.action_names = list(state_names), list(action_names)
        self.video_keys, self.height, self.width = list(video_keys), height, width
        self.robot_type, self.chunks_size = robot_type, chunks_size
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict] = []
        self.stats_rows: list[dict] = []
        self.total_frames = 0

    def add_episode(self, states: np.ndarray, actions: np.ndarray,
                    videos: dict[str, np.ndarray], task: str) -> int:
        n, ep = len(states), len(self.episode_rows)
        if len(actions) != n or any(len(v) != n for v in videos.values()):
            raise ValueError("states, actions and every video must have the same length")
        chunk = ep // self.chunks_size
        task_index = self.tasks.setdefault(task, len(self.tasks))
        cols = L.frame_columns(states, actions, self.fps, ep, self.total_frames, task_index)
        table = pa.table({k: (pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
                              if v.ndim == 2 else pa.array(v)) for k, v in cols.items()})
        path = self.root / DATA_PATH.format(episode_chunk=chunk, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for key in self.video_keys:
            enc = VideoEncoder(self.root / VIDEO_PATH.format(episode_chunk=chunk, video_key=key,
                                                             episode_index=ep),
                               self.fps, self.width, self.height, self.vcodec)
            enc.add(videos[key])
            enc.close()
        self.episode_rows.append({"episode_index": ep, "tasks": [task], "length": n})
        self.stats_rows.append({"episode_index": ep,
                                "stats": {k: L.feature_stats(v) for k, v in cols.items()}})
        self.total_frames += n
        return ep

    def finish(self) -> dict:
        n_eps = len(self.episode_rows)
        feats = {
            L.STATE_KEY: {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names},
            L.ACTION_KEY: {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names},
        }
        for key in self.video_keys:
            feats[key] = {"dtype": "video", "shape": [self.height, self.width, 3],
                          "names": ["height", "width", "channels"],
                          "info": {"video.height": self.height, "video.width": self.width,
                                   "video.codec": CODECS[self.vcodec][1], "video.pix_fmt": "yuv420p",
                                   "video.is_depth_map": False, "video.fps": self.fps,
                                   "video.channels": 3, "has_audio": False}}
        feats.update({k: dict(v) for k, v in L.DEFAULT_FEATURES.items()})
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": n_eps, "total_frames": self.total_frames,
            "total_tasks": len(self.tasks), "total_videos": n_eps * len(self.video_keys),
            "total_chunks": (n_eps + self.chunks_size - 1) // self.chunks_size,
            "chunks_size": self.chunks_size, "fps": self.fps, "splits": {"train": f"0:{n_eps}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH, "features": feats,
        }
        L.write_json(self.root / L.INFO_PATH, info)
        _write_jsonl(self.root / EPISODES_PATH, self.episode_rows)
        _write_jsonl(self.root / EPISODES_STATS_PATH, self.stats_rows)
        _write_jsonl(self.root / TASKS_PATH, [{"task_index": i, "task": t} for t, i in self.tasks.items()])
        return info
