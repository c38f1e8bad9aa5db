"""Estimate a constant per-episode time offset between the video and the action/state streams.

Idea: when the robot moves, the pictures change. Per frame step we measure how much the
images change (mean absolute difference of consecutive frames, each camera standardised, then
averaged over cameras) and how much the robot moved (norm of the per-dimension-standardised
change of the chosen state dimensions), and pick the lag within +-max_lag frames that maximises
their Pearson correlation. Offset k means video frame t + k shows what data row t recorded.

Trade-offs: only a constant offset is found (no drift or dropped frames); an episode with
little motion gives a weak, unreliable peak, so an estimate whose correlation is below
``min_corr`` is reported but not applied (offset 0, ``confident: false``). By default the
motion signal uses the state dimensions whose names do not look like rates or forces
(velocity, effort, ...): those change when the robot speeds up, not when it moves, and they
blur the peak.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sim.imageops import resize_area

from .errors import DataToolsError
from .lerobot import open_dataset
from .lerobot.layout import STATE_KEY
from .parallel import chunks, run_ordered
from .shardwork import close_datasets, worker_dataset
from .sidecars import FORMAT_VERSION, SYNC_KIND

RATE_WORDS = ("vel", "speed", "acc", "force", "torque", "effort", "current")
# Name parts such as "vx", "wz", "dx" (ee_vx, base_wz): rates or deltas, not positions.
RATE_TOKEN = re.compile(r"^(?:[vw][xyz]?|d[xyz])$")
SIGNAL_SIZE = 32  # frames are area-resized before differencing: faster, less codec noise


@dataclass
class EpisodeSync:
    episode_index: int
    offset: int  # applied offset (0 when not confident)
    estimated: int  # best lag found
    corr: float  # correlation at the best lag
    corr_at_zero: float
    confident: bool


def default_motion_dims(names: list[str] | None, width: int) -> list[int]:
    if not names:
        return list(range(width))
    def is_rate(name: str) -> bool:
        name = str(name).lower()
        return any(w in name for w in RATE_WORDS) or any(
            RATE_TOKEN.match(t) for t in re.split(r"[^a-z0-9]+", name))
    dims = [i for i, n in enumerate(names) if not is_rate(n)]
    return dims or list(range(width))


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / (x.std() + 1e-9)


def image_change(frames_by_view: list[np.ndarray]) -> np.ndarray:
    """[N-1]: how much the pictures change from frame t to t+1."""
    sig = []
    for frames in frames_by_view:
        small = resize_area(frames, SIGNAL_SIZE).astype(np.float32)
        sig.append(_standardise(np.abs(np.diff(small, axis=0)).mean(axis=(1, 2, 3))))
    return np.mean(sig, axis=0)


def motion(states: np.ndarray, dims: list[int]) -> np.ndarray:
    """[N-1]: how far the robot moved from row t to t+1."""
    d = np.diff(states[:, dims].astype(np.float64), axis=0)
    return np.linalg.norm(d / (d.std(axis=0) + 1e-9), axis=1)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def best_lag(img: np.ndarray, mot: np.ndarray, max_lag: int) -> tuple[int, dict[int, float]]:
    """The lag k maximising corr(img[t + k], mot[t]) and all correlations tried."""
    n = min(len(img), len(mot))
    corr = {}
    for k in range(-max_lag, max_lag + 1):
        a, b = (img[k:n], mot[:n - k]) if k >= 0 else (img[:n + k], mot[-k:n])
        if len(a) >= 4:
            corr[k] = _pearson(a, b)
    if not corr:
        return 0, {0: 0.0}
    return max(corr, key=lambda k: (corr[k], -abs(k))), corr


def _sync_chunk(task: tuple) -> list[EpisodeSync]:
    src, episodes, dims, max_lag, min_corr = task
    ds = worker_dataset(src)
    out = []
    for ep in episodes:
        states = ds.read_columns(ep, [STATE_KEY])[STATE_KEY]
        frames = [ds.read_frames(ep, key) for key in ds.video_keys]
        for key, f in zip(ds.video_keys, frames):
            if len(f) != len(states):
                raise DataToolsError(f"episode {ep}, camera {key!r}: {len(f)} frames but "
                                     f"{len(states)} data rows; cannot estimate an offset")
        if len(states) < 2 * max_lag + 4:  # too short to compare shifted signals
            out.append(EpisodeSync(ep, 0, 0, 0.0, 0.0, False))
            continue
        lag, corr = best_lag(image_change(frames), motion(states, dims), max_lag)
        ok = corr[lag] >= min_corr
        out.append(EpisodeSync(ep, lag if ok else 0, lag, round(corr[lag], 4),
                               round(corr.get(0, 0.0), 4), ok))
    return out


def estimate_offsets(src: Path, max_lag: int = 5, min_corr: float = 0.4,
                     dims: list[int] | None = None, workers: int = 1,
                     progress: bool = False) -> dict:
    """The sync file content: one EpisodeSync per episode."""
    if max_lag < 1:
        raise DataToolsError(f"--max-lag must be at least 1 (got {max_lag})")
    with open_dataset(src) as ds:
        if not ds.video_keys:
            raise DataToolsError(f"{src}: the dataset has no video features to synchronise")
        if STATE_KEY not in ds.features:
            raise DataToolsError(f"{src}/meta/info.json: no {STATE_KEY!r} feature")
        width = int(ds.features[STATE_KEY]["shape"][0])
        dims = dims if dims is not None else default_motion_dims(ds.feature_names(STATE_KEY), width)
        bad = [d for d in dims if not 0 <= d < width]
        if bad:
            raise DataToolsError(f"--motion-dims {bad} outside the {width} state dimensions")
        episodes = list(ds.episodes)
    tasks = [(str(src), c, dims, max_lag, min_corr) for c in chunks(episodes, workers)]
    try:
        results = [r for part in run_ordered(_sync_chunk, tasks, workers,
                                             lambda t: f"episodes {t[1][0]}..{t[1][-1]}",
                                             "sync episodes", progress) for r in part]
    finally:
        close_datasets()
    return {"kind": SYNC_KIND, "format_version": FORMAT_VERSION, "source": str(src),
            "max_lag": max_lag, "min_corr": min_corr, "motion_dims": dims,
            "episodes": [asdict(r) for r in results]}
