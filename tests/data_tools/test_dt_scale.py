"""build-shards at scale: byte-identical output for any --workers, skipping finished shards on
a re-run (and decoding only what the missing ones need), resuming an interrupted run."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from data_tools.errors import DataToolsError
from data_tools.lerobot.base import LeRobotDatasetBase
from data_tools.parallel import chunks, run_ordered
from data_tools.shards import build_shards

ARGS = dict(level="L1", seed=3, samples_per_shard=6, progress=False)


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _inodes(folder):
    return {p.name: p.stat().st_ino for p in folder.glob("shard-*.tar")}


@pytest.fixture
def decoded(monkeypatch):
    """Records (episode, camera) of every video decode done in this process."""
    calls = []
    real = LeRobotDatasetBase.read_frames

    def spy(self, ep, key):
        calls.append((ep, key))
        return real(self, ep, key)
    monkeypatch.setattr(LeRobotDatasetBase, "read_frames", spy)
    return calls


def test_output_is_byte_identical_whatever_the_worker_count(dt_tiny, tmp_path):
    one = build_shards(dt_tiny, tmp_path / "w1", workers=1, **ARGS)
    three = build_shards(dt_tiny, tmp_path / "w3", workers=3, **ARGS)
    assert len(one["shards"]) >= 5
    assert _files(tmp_path / "w1") == _files(tmp_path / "w3")  # tars and index.json
    assert all(len(s["sha256"]) == 64 for s in three["shards"])


def test_rerun_skips_complete_shards_and_decodes_only_what_is_missing(dt_tiny, tmp_path, decoded):
    out = tmp_path / "out"
    first = build_shards(dt_tiny, out, **ARGS)
    before, inodes = _files(out), _inodes(out)
    assert first["reused"] == 0 and len(decoded) == 2 * 5
    decoded.clear()
    again = build_shards(dt_tiny, out, **ARGS)  # nothing changed: nothing decoded or written
    assert again["reused"] == len(first["shards"]) and decoded == []
    assert _inodes(out) == inodes
    # Lose one shard and corrupt another: only those two are rewritten, from their episodes.
    names = [s["name"] for s in first["shards"]]
    (out / names[1]).unlink()
    with open(out / names[2], "r+b") as fh:
        fh.seek(700)
        fh.write(b"\xff" * 8)
    needed_eps = set()
    for shard in (names[1], names[2]):
        with tarfile.open(fileobj=io.BytesIO(before[shard])) as tar:
            needed_eps |= {int(m.name[2:8]) for m in tar.getmembers()}
    third = build_shards(dt_tiny, out, **ARGS)
    assert third["reused"] == len(names) - 2
    assert {ep for ep, _ in decoded} == needed_eps
    assert _files(out) == before
    kept = {n: i for n, i in _inodes(out).items() if n not in names[1:3]}
    assert kept == {n: i for n, i in inodes.items() if n not in names[1:3]}


def test_changed_inputs_or_force_rebuild_everything(dt_tiny, tmp_path, decoded):
    out = tmp_path / "out"
    build_shards(dt_tiny, out, **ARGS)
    assert build_shards(dt_tiny, out, **{**ARGS, "seed": 4})["reused"] == 0
    decoded.clear()
    assert build_shards(dt_tiny, out, force=True, **{**ARGS, "seed": 4})["reused"] == 0
    assert len(decoded) == 10


def test_interrupted_run_resumes_from_finished_shards(dt_tiny, tmp_path, dt_shard_crash):
    reference = tmp_path / "ref"
    build_shards(dt_tiny, reference, **ARGS)
    out = tmp_path / "out"
    written = dt_shard_crash.arm()
    with pytest.raises(KeyboardInterrupt):
        build_shards(dt_tiny, out, **ARGS)
    partial = tmp_path / ".out.partial"
    assert not out.exists() and partial.is_dir()
    manifest = json.loads((partial / "build.json").read_text())
    assert sorted(manifest["done"]) == sorted(written)
    dt_shard_crash.disarm()
    resumed = build_shards(dt_tiny, out, **ARGS)
    assert resumed["reused"] == 2 and not partial.exists()
    assert _files(out) == _files(reference)


def test_a_dying_worker_is_an_error_not_a_hang():
    with pytest.raises(DataToolsError, match="worker process died while working on task 7"):
        list(run_ordered(os._exit, [7, 7], workers=2, describe=lambda t: f"task {t}"))


def test_chunks_keep_order_and_balance():
    parts = chunks(list(range(50)), workers=3)
    assert [x for p in parts for x in p] == list(range(50))
    assert len(parts) >= 3 * 3 and max(map(len, parts)) <= 16
