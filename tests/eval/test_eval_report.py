"""Success-rate intervals, the results table's cells, and the rollout frame strips."""

import math

import numpy as np
import pytest

from wallwm_pretrain.eval.report import markdown_table, rate_cell, save_strip, wilson_interval

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def textbook_wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """(p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), written out independently."""
    p = k / n
    lo = (p + z**2 / (2 * n) - z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))) / (1 + z**2 / n)
    hi = (p + z**2 / (2 * n) + z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))) / (1 + z**2 / n)
    return lo, hi


@pytest.mark.parametrize("k, n, expected", [
    # Newcombe (1998), Statistics in Medicine 17:857, method 3 (score interval without correction)
    (0, 10, (0.0, 0.2775)),
    (10, 10, (0.7225, 1.0)),
    (5, 10, (0.2366, 0.7634)),
    (81, 263, (0.2553, 0.3662)),
])
def test_wilson_known_values(k, n, expected):
    lo, hi = wilson_interval(k, n)
    assert (lo, hi) == pytest.approx(expected, abs=1e-4)
    assert (lo, hi) == pytest.approx(textbook_wilson(k, n), abs=1e-12)


def test_wilson_edges_have_closed_forms():
    z2 = 1.96**2
    assert wilson_interval(0, 10) == pytest.approx((0.0, z2 / (10 + z2)))
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + z2), 1.0))
    # exactly, not one rounding step inside: the interval always holds the observed rate
    for n in range(1, 301):
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0, n
    assert wilson_interval(0, 0) == (0.0, 1.0)  # no trials: no information


def test_wilson_bounds_monotone_and_symmetric():
    for n in (1, 2, 7, 20, 100):
        intervals = [wilson_interval(k, n) for k in range(n + 1)]
        for k, (lo, hi) in enumerate(intervals):
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            # successes and failures swap roles
            assert (lo, hi) == pytest.approx((1 - intervals[n - k][1], 1 - intervals[n - k][0]), abs=1e-12)
        los, his = zip(*intervals)
        assert all(a < b for a, b in zip(los, los[1:])), los  # strictly: one more success moves both
        assert all(a < b for a, b in zip(his, his[1:])), his
    # more trials at the same rate give a narrower interval
    widths = [np.subtract(*wilson_interval(n // 2, n)[::-1]) for n in (10, 40, 160)]
    assert widths[0] > widths[1] > widths[2] > 0
    # a wider z gives a wider interval
    assert wilson_interval(3, 10, z=2.58)[0] < wilson_interval(3, 10)[0]


def test_rate_cell_format():
    assert rate_cell(5, 10) == "5/10 = 50% [24%, 76%]"
    assert rate_cell(0, 10) == "0/10 = 0% [0%, 28%]"
    assert rate_cell(10, 10) == "10/10 = 100% [72%, 100%]"
    assert rate_cell(1, 1) == "1/1 = 100% [21%, 100%]"
    assert rate_cell(0, 0) == "0/0 = 0% [0%, 100%]"


def test_markdown_table():
    table = markdown_table(["task", "success"], [["a", "1/2"], ["all", 3]])
    assert table.splitlines() == ["| task | success |", "|---|---|", "| a | 1/2 |", "| all | 3 |"]


def test_save_strip_writes_a_png_and_picks_evenly(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    strip = [(10 * i, f"event {i}", rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for i in range(30)]
    path = save_strip(strip, "a title", tmp_path / "nested" / "strip.png", max_frames=5)
    assert path == tmp_path / "nested" / "strip.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (int(1.6 * 5 * 100), int(2.1 * 100))
        assert np.asarray(im.convert("RGB")).std() > 0  # not a blank canvas
    one = save_strip(strip[:1], "one frame", tmp_path / "one.png")
    with Image.open(one) as im:
        assert im.size == (160, 210)
