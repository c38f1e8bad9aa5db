"""The intervals of ``bench/science.py`` (``bench/science_stats.py``) and its split check."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from science import SPLIT, check_split  # noqa: E402
from science_stats import outcome_array, paired_difference, success  # noqa: E402


def _bernoulli(rates: list[float], tasks: int = 4, episodes: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([(rng.random((tasks, episodes)) < r).astype(float) for r in rates])


def test_all_successes_and_all_failures_have_degenerate_intervals():
    ones, zeros = np.ones((3, 2, 5)), np.zeros((3, 2, 5))
    assert (success(ones).low, success(ones).high, success(ones).mean) == (1.0, 1.0, 1.0)
    assert (success(zeros).low, success(zeros).high) == (0.0, 0.0)
    d = paired_difference(ones, zeros)
    assert (d.mean, d.low, d.high, d.above_zero) == (1.0, 1.0, 1.0, 1.0)


def test_point_estimate_is_the_mean_over_seeds_of_pooled_success():
    a = np.zeros((3, 2, 4))
    a[0, :, :2] = 1   # seed 0: 4 of 8
    a[2] = 1          # seed 2: 8 of 8
    est = success(a)
    assert est.per_seed == (0.5, 0.0, 1.0) and est.mean == pytest.approx(0.5)
    assert est.low < 0.5 < est.high


def test_seed_to_seed_spread_widens_the_interval():
    """Two experiments with the same overall rate: seeds that agree (0.5 each) vs seeds that
    disagree (0.1 / 0.5 / 0.9). A bootstrap over episodes alone would give them about the same
    interval; the hierarchical one must be much wider for the second."""
    agree, disagree = _bernoulli([0.5, 0.5, 0.5]), _bernoulli([0.1, 0.5, 0.9])
    width = lambda e: e.high - e.low  # noqa: E731
    assert width(success(disagree)) > 2 * width(success(agree))


def test_pairing_removes_what_both_arms_share():
    """Arm b = arm a with a few episodes flipped to success: the paired interval of a - b is tight
    and below zero, while the two arms' own intervals overlap widely."""
    a = _bernoulli([0.3, 0.4, 0.5], episodes=30)
    b = a.copy()
    b[:, :, :4] = 1
    d = paired_difference(a, b)
    assert d.high < 0 and d.above_zero == 0.0
    ea, eb = success(a), success(b)
    assert ea.high > eb.low  # unpaired intervals overlap


def test_bad_shapes_are_refused_naming_the_seed_or_task():
    with pytest.raises(ValueError, match="same seeds"):
        paired_difference(np.zeros((2, 1, 3)), np.zeros((3, 1, 3)))
    with pytest.raises(ValueError, match="'push-v3'"):
        outcome_array([{"reach-v3": [True]}], ["reach-v3", "push-v3"])
    with pytest.raises(ValueError, match="same, non-zero number"):
        outcome_array([{"reach-v3": [True]}, {"reach-v3": [True, False]}], ["reach-v3"])


def test_the_split_holds_out_tasks_whose_events_are_all_trained():
    check_split(SPLIT["train"], SPLIT["heldout"])
    assert not set(SPLIT["train"]) & set(SPLIT["heldout"])
    with pytest.raises(SystemExit, match="'press'"):
        check_split(["reach-v3", "drawer-open-v3"], ["button-press-v3"])
    with pytest.raises(SystemExit, match="also a training task"):
        check_split(["reach-v3"], ["reach-v3"])
