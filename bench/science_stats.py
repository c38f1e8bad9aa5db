"""Intervals for the event-vs-chunk comparison that count both sources of noise: training seeds and episodes.

A success rate measured on one trained model varies from episode to episode (the Wilson interval
of ``eval/report.py`` covers that alone), and a second training run with another seed gives
another model with another rate. The interval here is a **hierarchical bootstrap**: each
replicate draws the training seeds with replacement, then, inside every drawn seed and every
task, that seed's evaluation episodes with replacement, and takes the mean success over all
of them. Its 2.5 / 97.5 percentiles are the 95% interval of the arm's mean success.

The **paired difference** of two arms uses the same draws for both (the same seed index, the
same episode indices): every arm is evaluated on the same episode layouts, so an episode that
is hard for one arm tends to be hard for the other, and pairing removes that shared part.

Written with numpy here rather than ``scipy.stats.bootstrap``: scipy resamples one level
(independent observations), not seeds and then episodes within seeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPLICATES = 10_000


@dataclass(frozen=True)
class Estimate:
    mean: float                     # mean success over seeds (episodes pooled within a seed)
    low: float                      # 95% interval, hierarchical bootstrap
    high: float
    per_seed: tuple[float, ...]     # each seed's pooled success
    above_zero: float | None = None  # paired differences: share of replicates > 0


def outcome_array(per_seed: list[dict[str, list[bool]]], tasks: list[str]) -> np.ndarray:
    """``[seeds, tasks, episodes]`` 0/1 from ``[{task: [success per episode]}]``; every seed must
    have the same episodes per task (the same evaluation layouts), which is checked."""
    rows = []
    for s, outcomes in enumerate(per_seed):
        missing = [t for t in tasks if t not in outcomes]
        if missing:
            raise ValueError(f"seed #{s} has no episodes of task {missing[0]!r}")
        rows.append([[float(x) for x in outcomes[t]] for t in tasks])
    lengths = {len(e) for row in rows for e in row}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"every seed and task needs the same, non-zero number of episodes, got {sorted(lengths)}")
    return np.asarray(rows)


def _draws(shape: tuple[int, int, int], replicates: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Index draws: seeds ``[R, S]`` and episodes ``[R, S, T, E]`` (within each drawn seed and task)."""
    s, t, e = shape
    rng = np.random.default_rng(seed)
    return rng.integers(s, size=(replicates, s)), rng.integers(e, size=(replicates, s, t, e))


def _replicates(outcomes: np.ndarray, seeds: np.ndarray, episodes: np.ndarray) -> np.ndarray:
    """Mean success of every replicate: seeds drawn, then episodes within each drawn seed and task."""
    picked = outcomes[seeds]                                          # [R, S, T, E]
    drawn = np.take_along_axis(picked, episodes, axis=3)
    return drawn.reshape(len(seeds), -1).mean(axis=1)


def _estimate(values: np.ndarray, per_seed: np.ndarray, point: float, paired: bool) -> Estimate:
    low, high = np.percentile(values, [2.5, 97.5])
    return Estimate(float(point), float(low), float(high), tuple(float(x) for x in per_seed),
                    float((values > 0).mean()) if paired else None)


def success(outcomes: np.ndarray, replicates: int = REPLICATES, seed: int = 0) -> Estimate:
    """An arm's mean success with its hierarchical-bootstrap 95% interval."""
    seeds, episodes = _draws(outcomes.shape, replicates, seed)
    per_seed = outcomes.reshape(outcomes.shape[0], -1).mean(axis=1)
    return _estimate(_replicates(outcomes, seeds, episodes), per_seed, per_seed.mean(), paired=False)


def paired_difference(a: np.ndarray, b: np.ndarray, replicates: int = REPLICATES, seed: int = 0) -> Estimate:
    """``a - b`` (success of arm a minus arm b) with the same seed and episode draws for both."""
    if a.shape != b.shape:
        raise ValueError(f"paired arms need the same seeds, tasks and episodes, got {a.shape} and {b.shape}")
    seeds, episodes = _draws(a.shape, replicates, seed)
    diff = _replicates(a, seeds, episodes) - _replicates(b, seeds, episodes)
    per_seed = a.reshape(a.shape[0], -1).mean(axis=1) - b.reshape(b.shape[0], -1).mean(axis=1)
    return _estimate(diff, per_seed, per_seed.mean(), paired=True)
