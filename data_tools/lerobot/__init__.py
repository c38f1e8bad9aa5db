"""LeRobot v3.0 datasets on disk: a writer (used by ``synth``) and a reader (used by
``build-shards`` and meant for real datasets too).

Layout, as LeRobot publishes it::

    meta/info.json                                  schema, fps, path templates, totals
    meta/stats.json                                 global feature statistics
    meta/tasks.parquet                              task string (index) -> task_index
    meta/episodes/chunk-000/file-000.parquet        one row per episode: length, tasks,
                                                    data file + row range, per-camera video
                                                    file + [from_timestamp, to_timestamp)
    data/chunk-000/file-000.parquet                 one row per frame, many episodes per file
    videos/<video_key>/chunk-000/file-000.mp4       many episodes concatenated per file

Only the format is shared with LeRobot; the code is independent of the ``lerobot`` package,
which is not a dependency.
"""

from .layout import CODEBASE_VERSION
from .reader import EpisodeMeta, LeRobotV3Dataset, VideoSpan
from .writer import LeRobotV3Writer

__all__ = ["CODEBASE_VERSION", "EpisodeMeta", "LeRobotV3Dataset", "LeRobotV3Writer", "VideoSpan"]
