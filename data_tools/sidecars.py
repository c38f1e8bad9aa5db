"""The small JSON files that ``cluster`` and ``sync`` write and ``build-shards`` reads.

Kept apart from the code that computes them so that build-shards can read an assignments file
without importing scikit-learn or the text encoder. Both loaders check what they read and name
the file and the entry at fault.

clusters (``cluster --out``)::

    {"kind": "wallwm-event-clusters", "format_version": 1, "seed": 0, "levels": {...},
     "assignments": [{"episode_index", "level", "index", "caption", "vl_cluster",
                      "action_cluster"}, ...]}

sync offsets (``sync --out``)::

    {"kind": "wallwm-video-sync", "format_version": 1, "max_lag": 5,
     "episodes": [{"episode_index", "offset", "corr", "corr_at_zero", "confident"}, ...]}

``offset`` k means video frame t + k shows what data row t recorded (the video lags by k).
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DataToolsError
from . import textio

CLUSTERS_KIND = "wallwm-event-clusters"
SYNC_KIND = "wallwm-video-sync"
FORMAT_VERSION = 1


def _load(path: Path, kind: str) -> dict:
    path = Path(path)
    try:
        obj = textio.read_json(path)
    except FileNotFoundError:
        raise DataToolsError(f"{path} not found") from None
    except (OSError, ValueError) as exc:
        raise DataToolsError(f"{path}: cannot read JSON ({exc})") from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        raise DataToolsError(f"{path}: not a {kind} file (its \"kind\" is "
                             f"{obj.get('kind') if isinstance(obj, dict) else None!r})")
    return obj


def write_json(path: Path, obj: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def load_assignments(path: Path) -> dict[tuple[int, str, int], tuple[int, int]]:
    """(episode, level, index) -> (vl_cluster, action_cluster)."""
    obj = _load(path, CLUSTERS_KIND)
    out = {}
    for i, a in enumerate(obj.get("assignments", [])):
        try:
            out[(int(a["episode_index"]), str(a["level"]), int(a["index"]))] = (
                int(a["vl_cluster"]), int(a["action_cluster"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataToolsError(f"{path}: assignment {i} is malformed ({exc!r})") from None
    return out


def load_offsets(path: Path) -> dict[int, int]:
    """episode -> video offset in frames."""
    obj = _load(path, SYNC_KIND)
    out = {}
    for i, e in enumerate(obj.get("episodes", [])):
        try:
            out[int(e["episode_index"])] = int(e["offset"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataToolsError(f"{path}: episode entry {i} is malformed ({exc!r})") from None
    return out
