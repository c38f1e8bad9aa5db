"""Single-process reference runs shared by the equivalence test modules (computed once)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
from _launch import launch  # noqa: E402


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """TP1 x PP1 x DP1, one forward per step, the 2-layer model."""
    return launch(tmp_path_factory.mktemp("tp1"), world=1, tp=1)[0]["run"]


@pytest.fixture(scope="session")
def reference4(tmp_path_factory):
    """As ``reference`` with 4 coupled layers (what pp * vpp = 2 * 2 stages need)."""
    return launch(tmp_path_factory.mktemp("tp1_4"), world=1, tp=1, num_layers=4)[0]["run"]
