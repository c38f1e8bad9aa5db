"""Quasi-static step pruning for stage-1 (video pretraining) shards: ``build-shards --prune-static``.

Long stretches where nothing in view moves (the robot waits, a slow approach) teach the video
tower little and cost as much as any other frames. Pruning drops such control steps from each
event when its sample is cut.

**Motion measure.** ``motion(a, b)`` is the mean absolute difference of two uint8 frames, over
every view, pixel and channel, in [0, 255] units (0: identical, 255: every value flipped from 0
to 255). It is measured on the frames as they are stored in the sample, i.e. after the
``--image-size`` resize and the ``--sync`` shift.

**Rule.** Step 0 of an event is always kept; step t is kept when ``motion`` between its frames
and the frames of the *last kept* step is at least the threshold, otherwise dropped. Comparing
with the last kept step (not with step t - 1) means slow drift still gets kept once it adds up
to the threshold. Threshold 0 keeps every step and is the same as no pruning (the default).

**Minimum length.** An event that would keep fewer than ``min(min_steps, its length)`` steps is
kept whole (not pruned) and counted as ``events_kept_whole``; it is never dropped: shard
membership is fixed from the events before any video is decoded (see ``shards``), so a sample
cannot disappear. The default minimum, 5 = 1 + 4 steps, is two latent frames of a VAE with
temporal compression 4 (Wan's), the least that still shows a change.

**Alignment.** The same steps are dropped from ``actions.npy``, ``states.npy`` and
``frames.npy``; ``state.npy`` is step 0, always kept. The sample's meta records
``kept_steps`` (indices from the event start), ``pruned_steps`` (how many were dropped) and
``prune_kept_whole``, so a reader knows its time axis is no longer uniform. Actions of a pruned
sample no longer add up to the motion between kept frames: pruned shards are for the video
stage, not for action pretraining.

**Counts.** :func:`count_pruning` sums the per-sample meta of the written shards, so a resumed
build (whose finished shards were not cut again) reports the same totals as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataToolsError
from .shardread import iter_tar, sample_meta

MOTION_MEASURE = "mean absolute uint8 difference over views, pixels and channels, in [0, 255]"
MAX_THRESHOLD = 255.0


@dataclass(frozen=True)
class Pruning:
    """``build-shards --prune-static THRESHOLD --prune-min-steps N``."""
    threshold: float
    min_steps: int = 5

    @property
    def active(self) -> bool:
        return self.threshold > 0


def check_pruning(threshold: float, min_steps: int) -> Pruning:
    """The validated option; DataToolsError naming the flag for a bad value."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise DataToolsError(f"--prune-static must be a number in [0, {MAX_THRESHOLD:g}], "
                             f"got {threshold!r}") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_THRESHOLD:
        raise DataToolsError(f"--prune-static must be a motion threshold in [0, {MAX_THRESHOLD:g}] "
                             f"(mean absolute pixel difference in uint8 units; 0 = off), got {threshold!r}")
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or min_steps < 1:
        raise DataToolsError(f"--prune-min-steps must be an integer >= 1, got {min_steps!r}")
    return Pruning(value, min_steps)


def motion(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 frame stacks [V, H, W, C], in [0, 255]."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def kept_steps(frames: np.ndarray, threshold: float) -> list[int]:
    """Indices of the steps of ``frames`` [T, V, H, W, C] that the rule keeps (step 0 always)."""
    if len(frames) == 0:
        return []
    keep = [0]
    for t in range(1, len(frames)):
        if motion(frames[t], frames[keep[-1]]) >= threshold:
            keep.append(t)
    return keep


@dataclass(frozen=True)
class StepPlan:
    """What pruning does to one event: the steps kept and whether it fell back to all of them."""
    keep: list[int]
    kept_whole: bool  # pruning would have left fewer than min_steps steps

    def meta(self, length: int) -> dict:
        return {"kept_steps": list(self.keep), "pruned_steps": length - len(self.keep),
                "prune_kept_whole": self.kept_whole}


def plan_event(frames: np.ndarray, pruning: Pruning) -> StepPlan:
    keep = kept_steps(frames, pruning.threshold)
    if len(keep) < min(pruning.min_steps, len(frames)):
        return StepPlan(list(range(len(frames))), True)
    return StepPlan(keep, False)


def count_pruning(metas, pruning: Pruning) -> dict:
    """The ``pruning`` entry of index.json, from the meta of every written sample."""
    events = changed = whole = before = kept = 0
    lengths = []
    for where, meta in metas:
        if "kept_steps" not in meta:
            raise DataToolsError(f"{where}.json: no 'kept_steps'; written without --prune-static")
        n = int(meta["end"]) - int(meta["start"])
        k = len(meta["kept_steps"])
        events += 1
        changed += k < n
        whole += bool(meta.get("prune_kept_whole"))
        before += n
        kept += k
        lengths.append(k)
    lengths = np.array(lengths or [0])
    return {"threshold": pruning.threshold, "min_steps": pruning.min_steps,
            "measure": MOTION_MEASURE, "rule": "keep step 0 and every step whose motion from the "
            "last kept step is >= threshold; an event left with < min_steps steps is kept whole",
            "events": events, "events_pruned": changed, "events_kept_whole": whole,
            "steps_before": before, "steps_kept": kept, "steps_dropped": before - kept,
            "kept_length": {"min": int(lengths.min()), "max": int(lengths.max()),
                            "mean": round(float(lengths.mean()), 3)}}


def folder_metas(folder: Path, shard_names: list[str]):
    """(where, meta) of every sample of the named shards in ``folder``, frames skipped."""
    for name in shard_names:
        for key, members in iter_tar(Path(folder) / name, ("json",)):
            where = f"{Path(folder) / name}: sample {key}"
            yield where, sample_meta(members, where)


def summary_line(entry: dict) -> str:
    """One line for the end of a run, from index.json's ``pruning`` entry."""
    before = max(entry["steps_before"], 1)
    return (f"pruned quasi-static steps (threshold {entry['threshold']:g}): "
            f"{entry['steps_dropped']} of {entry['steps_before']} steps dropped "
            f"({100 * entry['steps_dropped'] / before:.1f}%), {entry['events_pruned']} of "
            f"{entry['events']} events changed, {entry['events_kept_whole']} kept whole "
            f"(fewer than {entry['min_steps']} steps would remain)")
