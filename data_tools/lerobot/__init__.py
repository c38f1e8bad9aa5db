"""LeRobot datasets on disk, v2.1 and v3.0: readers (used by every verb that reads a dataset,
meant for real datasets too) and writers (used by ``synth`` and tests).

v3.0 layout::

    meta/info.json                                  schema, fps, path templates, totals
    meta/stats.json                                 global feature statistics
    meta/tasks.parquet                              task string (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode: length, tasks,
                                                    data file + row range, per-camera video
                                                    file + [from_timestamp, to_timestamp)
    data/chunk-000/file-000.parquet                 one row per frame, many episodes per file
    videos/<video_key>/chunk-000/file-000.mp4       many episodes concatenated per file

v2.1 layout: see ``v21``. ``open_dataset`` picks the reader from ``codebase_version``. Only
the format is shared with LeRobot; the code is independent of the ``lerobot`` package, which
is not a dependency.
"""

from pathlib import Path

from ..errors import DatasetFormatError
from .base import LeRobotDatasetBase, read_info
from .layout import CODEBASE_VERSION
from .reader import EpisodeMeta, LeRobotV3Dataset, VideoSpan
from .v21 import LeRobotV21Dataset, LeRobotV21Writer
from .writer import LeRobotV3Writer

LAYOUTS = ("v3.0", "v2.1")


def open_dataset(root: Path) -> LeRobotDatasetBase:
    """A reader for the dataset at ``root``, v2.x or v3.x by its info.json."""
    info = read_info(root)
    version = str(info.get("codebase_version", "?"))
    if version.startswith("v3."):
        return LeRobotV3Dataset(root, info)
    if version.startswith("v2."):
        return LeRobotV21Dataset(root, info)
    raise DatasetFormatError(f"{Path(root) / 'meta/info.json'}: codebase_version {version!r} is "
                             "neither v2.x nor v3.x")


def writer_class(layout: str):
    return {"v3.0": LeRobotV3Writer, "v2.1": LeRobotV21Writer}[layout]


__all__ = ["CODEBASE_VERSION", "LAYOUTS", "EpisodeMeta", "LeRobotDatasetBase", "LeRobotV21Dataset",
           "LeRobotV21Writer", "LeRobotV3Dataset", "LeRobotV3Writer", "VideoSpan", "open_dataset",
           "writer_class"]
