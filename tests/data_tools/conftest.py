"""Fixtures for data_tools tests: tiny synthetic datasets, shard folders and a CLI runner.

Helpers are handed out as fixtures (prefixed ``dt_``) rather than imported, so these tests
do not depend on how pytest puts test folders on ``sys.path``. The shared dataset is
session-scoped and simulated once; tests that corrupt data copy it first.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data_tools.shards import build_shards
from data_tools.synthworld import synthesize

REPO = Path(__file__).resolve().parents[2]
TINY = dict(episodes=5, seed=7, regrasp_prob=0.5)


def _make_dataset(out: Path, **kw) -> Path:
    args = {**TINY, **kw}
    synthesize(out, args.pop("episodes"), args.pop("seed"), progress=False, **args)
    return out


def _events(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "events.jsonl").read_text().splitlines()]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_tools", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="session")
def dt_params() -> dict:
    return dict(TINY)


@pytest.fixture(scope="session")
def dt_make_dataset():
    """make(out, **synth_kwargs) -> out; defaults to the tiny parameters."""
    return _make_dataset


@pytest.fixture(scope="session")
def dt_events():
    """events(root) -> list of event dicts from root/events.jsonl."""
    return _events


@pytest.fixture(scope="session")
def dt_cli():
    """cli(*args) -> CompletedProcess of `python -m data_tools *args`."""
    return _cli


@pytest.fixture(scope="session")
def dt_tiny(tmp_path_factory) -> Path:
    return _make_dataset(tmp_path_factory.mktemp("synth") / "tiny")


@pytest.fixture(scope="session")
def dt_av1_pair(tmp_path_factory) -> dict[str, Path]:
    """The same 4 episodes in both LeRobot layouts, two AV1 cameras each: layout -> root."""
    base = tmp_path_factory.mktemp("av1")
    return {layout: _make_dataset(base / layout.replace(".", ""), episodes=4, seed=3,
                                  vcodec="av1", layout=layout) for layout in ("v3.0", "v2.1")}


@pytest.fixture(scope="session")
def dt_tiny_shards(dt_tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "l1"
    build_shards(dt_tiny, out, level="L1", seed=0, image_size=32, samples_per_shard=8, progress=False)
    return out


@pytest.fixture(scope="session")
def dt_tiny_wan(tmp_path_factory) -> Path:
    """Tiny random models from make-tiny (transformer/, vae/, text_encoder/, tokenizer/, vlm/, small_lm/)."""
    from wallwm_pretrain.convert.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("models") / "tiny-wan", seed=0)["vae"].parent


@pytest.fixture
def dt_shards_copy(dt_tiny_shards, tmp_path) -> Path:
    """A private copy of the small L1 shard folder (steps that add members change it in place)."""
    import shutil

    return Path(shutil.copytree(dt_tiny_shards, tmp_path / "shards"))


@pytest.fixture
def dt_one_thread(monkeypatch):
    """torch on one thread here and in the CLI processes it starts: the tiny models' kernels are
    far too small to gain from threads, and on a loaded machine OpenMP's waiting threads make
    them many times slower."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _ShardWriteCrash:
    """``arm()``: build-shards dies (KeyboardInterrupt) when it starts its third shard; returns the
    names of the shards written before. ``disarm()``: the real writer again."""

    def __init__(self, monkeypatch) -> None:
        from data_tools import shardwork

        self.monkeypatch, self.real, self.written = monkeypatch, shardwork.write_shard, []

    def arm(self) -> list[str]:
        def crash_after_two(task):
            if len(self.written) == 2:
                raise KeyboardInterrupt
            self.written.append(task.name)
            return self.real(task)
        self.monkeypatch.setattr("data_tools.shards.write_shard", crash_after_two)
        return self.written

    def disarm(self) -> None:
        self.monkeypatch.setattr("data_tools.shards.write_shard", self.real)


@pytest.fixture
def dt_shard_crash(monkeypatch) -> _ShardWriteCrash:
    return _ShardWriteCrash(monkeypatch)
