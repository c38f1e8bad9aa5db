"""build-shards --prune-static: quasi-static steps leave every per-step array of a sample
together, the sample meta and index.json count them (also after a resumed build), threshold 0 is
byte-identical to no pruning, and a bad threshold is a clear error before any work."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest

from data_tools.errors import DataToolsError
from data_tools.prune import kept_steps
from data_tools.shards import build_shards

# The same build as the dt_tiny_shards fixture, so pruned samples compare with its samples.
ARGS = dict(level="L1", seed=0, image_size=32, samples_per_shard=8, progress=False)
# Steps of the tiny synthetic world move 0.02 .. 17 (median about 3) by the motion measure:
# 1.5 drops the slow ones and keeps most.
THRESHOLD = 1.5


def _samples(folder):
    """key -> {ext: decoded member}, read with plain tarfile."""
    out = {}
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                data = tar.extractfile(m).read()
                out.setdefault(key, {})[ext] = (json.loads(data) if ext == "json"
                                                else np.load(io.BytesIO(data), allow_pickle=False))
    return out


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _expected_keep(frames, threshold):
    """The rule, written out independently: mean |difference| to the last kept step, in uint8 units."""
    keep = [0]
    for t in range(1, len(frames)):
        diff = np.abs(frames[t].astype(np.float64) - frames[keep[-1]].astype(np.float64))
        if diff.sum() / diff.size >= threshold:
            keep.append(t)
    return keep


@pytest.fixture(scope="module")
def pruned(dt_tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "l1"
    index = build_shards(dt_tiny, out, prune_static=THRESHOLD, prune_min_steps=2, **ARGS)
    return out, index


def test_static_steps_leave_every_array_together(dt_tiny_shards, pruned):
    full, cut = _samples(dt_tiny_shards), _samples(pruned[0])
    assert sorted(full) == sorted(cut)  # no sample disappears
    dropped = unchanged = 0
    for key, whole in full.items():
        s, meta = cut[key], cut[key]["json"]
        keep = _expected_keep(whole["frames.npy"], THRESHOLD)
        n = meta["end"] - meta["start"]
        assert n == len(whole["frames.npy"])
        assert meta["kept_steps"] == keep and meta["pruned_steps"] == n - len(keep), key
        assert meta["prune_kept_whole"] is False  # min_steps 2: no event of this world falls below
        for member in ("frames.npy", "actions.npy", "states.npy"):
            np.testing.assert_array_equal(s[member], whole[member][keep], err_msg=f"{key} {member}")
        np.testing.assert_array_equal(s["state.npy"], whole["state.npy"])
        assert s["state.npy"].tobytes() == s["states.npy"][0].tobytes()
        # the rest of the meta is the unpruned sample's
        assert {k: v for k, v in meta.items() if k not in ("kept_steps", "pruned_steps",
                                                            "prune_kept_whole")} == whole["json"]
        dropped += n - len(keep)
        unchanged += len(keep) == n
    assert dropped > 0 and unchanged > 0  # the threshold both drops and keeps in this world


def test_kept_steps_on_a_clip_that_stops_and_moves_again():
    rng = np.random.default_rng(0)
    still = rng.integers(0, 256, (1, 2, 4, 4, 3), dtype=np.uint8)
    frames = np.repeat(still, 6, axis=0)
    frames[1] = np.clip(frames[1].astype(int) + 1, 0, 255)  # a flicker well under the threshold
    frames[3:] = 255 - still  # a jump: every later step equals step 3
    frames[5] = 0
    assert kept_steps(frames, 10.0) == [0, 3, 5]
    assert kept_steps(frames, 0.0) == list(range(6))  # 0 keeps every step
    assert kept_steps(frames, 255.0) == [0]
    # slow drift: +4 per step is under 10 between neighbours, but adds up from the last kept step
    drift = np.stack([np.full((1, 4, 4, 3), 4 * t, dtype=np.uint8) for t in range(8)])
    assert kept_steps(drift, 10.0) == [0, 3, 6]


def test_index_and_meta_count_what_was_written(dt_tiny_shards, pruned):
    folder, index = pruned
    metas = [s["json"] for s in _samples(folder).values()]
    before = sum(m["end"] - m["start"] for m in metas)
    kept = sum(len(m["kept_steps"]) for m in metas)
    entry = json.loads((folder / "index.json").read_text())["pruning"]
    assert entry == index["pruning"]
    assert (entry["threshold"], entry["min_steps"]) == (THRESHOLD, 2)
    assert entry["events"] == len(metas) == index["total_samples"]
    assert entry["events_pruned"] == sum(m["pruned_steps"] > 0 for m in metas) > 0
    assert entry["events_kept_whole"] == 0
    assert (entry["steps_before"], entry["steps_kept"], entry["steps_dropped"]) == \
        (before, kept, before - kept)
    assert entry["kept_length"]["max"] == max(len(m["kept_steps"]) for m in metas)
    # Everything else, the statistics included (over the steps before pruning), is the
    # unpruned build's.
    plain = json.loads((dt_tiny_shards / "index.json").read_text())
    skip = ("shards", "build", "pruning")
    assert {k: v for k, v in index.items() if k not in skip + ("reused",)} == \
        {k: v for k, v in plain.items() if k not in skip}


def test_events_that_would_fall_below_the_minimum_are_kept_whole(dt_tiny, dt_tiny_shards, tmp_path):
    index = build_shards(dt_tiny, tmp_path / "hi", prune_static=8.0, prune_min_steps=4, **ARGS)
    full, cut = _samples(dt_tiny_shards), _samples(tmp_path / "hi")
    whole = pruned = 0
    for key, s in cut.items():
        meta, n = s["json"], len(full[key]["frames.npy"])
        keep = _expected_keep(full[key]["frames.npy"], 8.0)
        if len(keep) < min(4, n):
            assert meta["prune_kept_whole"] is True and meta["kept_steps"] == list(range(n))
            assert meta["pruned_steps"] == 0
            np.testing.assert_array_equal(s["frames.npy"], full[key]["frames.npy"])
            whole += 1
        else:
            assert meta["prune_kept_whole"] is False and meta["kept_steps"] == keep
            pruned += len(keep) < n
    assert whole > 0 and pruned > 0
    assert index["pruning"]["events_kept_whole"] == whole
    assert index["pruning"]["events_pruned"] == pruned


def test_threshold_zero_is_byte_identical_to_no_pruning(dt_tiny, dt_tiny_shards, tmp_path, dt_cli):
    build_shards(dt_tiny, tmp_path / "zero", prune_static=0.0, prune_min_steps=9, **ARGS)
    assert _files(tmp_path / "zero") == _files(dt_tiny_shards)
    res = dt_cli("build-shards", "--src", dt_tiny, "--out", tmp_path / "cli", "--level", "L1",
                 "--samples-per-shard", "8", "--prune-static", "0", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "pruned" not in res.stdout
    assert _files(tmp_path / "cli") == _files(dt_tiny_shards)


@pytest.mark.parametrize("threshold, min_steps, flag", [
    (-0.5, 5, "--prune-static"), (math.nan, 5, "--prune-static"), (math.inf, 5, "--prune-static"),
    (256.0, 5, "--prune-static"), (1.0, 0, "--prune-min-steps")])
def test_a_bad_threshold_is_an_error_before_any_work(dt_tiny, tmp_path, threshold, min_steps, flag):
    with pytest.raises(DataToolsError, match=flag):
        build_shards(dt_tiny, tmp_path / "out", prune_static=threshold, prune_min_steps=min_steps,
                     **ARGS)
    assert not any(tmp_path.iterdir())  # nothing written, not even a partial folder


def test_the_cli_names_the_flag_and_prints_the_counts(dt_tiny, tmp_path, dt_cli):
    res = dt_cli("build-shards", "--src", dt_tiny, "--out", tmp_path / "bad", "--prune-static", "-1")
    assert res.returncode == 1 and "error: --prune-static" in res.stderr
    res = dt_cli("build-shards", "--src", dt_tiny, "--out", tmp_path / "ok", "--samples-per-shard",
                 "8", "--prune-static", str(THRESHOLD), "--prune-min-steps", "2", "--quiet")
    assert res.returncode == 0, res.stderr
    entry = json.loads((tmp_path / "ok" / "index.json").read_text())["pruning"]
    assert (f"{entry['steps_dropped']} of {entry['steps_before']} steps dropped" in res.stdout
            and f"{entry['events_pruned']} of {entry['events']} events changed" in res.stdout)


def test_a_resumed_pruned_build_reports_the_same_counts(dt_tiny, tmp_path, dt_shard_crash):
    args = dict(ARGS, samples_per_shard=6, prune_static=THRESHOLD, prune_min_steps=3)
    reference = build_shards(dt_tiny, tmp_path / "ref", **args)
    out = tmp_path / "out"
    dt_shard_crash.arm()
    with pytest.raises(KeyboardInterrupt):
        build_shards(dt_tiny, out, **args)
    dt_shard_crash.disarm()
    resumed = build_shards(dt_tiny, out, **args)
    assert resumed["reused"] == 2
    assert resumed["pruning"] == reference["pruning"] and resumed["pruning"]["steps_dropped"] > 0
    assert _files(out) == _files(tmp_path / "ref")
    again = build_shards(dt_tiny, out, **args)  # finished: nothing rebuilt, same counts
    assert again["reused"] == len(again["shards"]) and again["pruning"] == reference["pruning"]
    # another threshold is another build: nothing reused
    assert build_shards(dt_tiny, out, **{**args, "prune_static": 3.0})["reused"] == 0


def test_the_training_loader_reads_pruned_shards(pruned):
    from wallwm_pretrain.config import DataConfig
    from wallwm_pretrain.data.cookers import Normalizer
    from wallwm_pretrain.data.loader import read_cooked

    folder = pruned[0]
    crude = _samples(folder)
    cfg = DataConfig(shards=str(folder), batch_size=4, num_workers=0, shuffle_buffer=0,
                     max_frames=64, length_buckets=[])
    seen = 0
    for s in read_cooked(folder, cfg, 64, Normalizer()):
        np.testing.assert_array_equal(s.frames, crude[s.key]["frames.npy"])
        assert len(s.frames) == len(s.meta["kept_steps"]) == len(s.actions)
        seen += 1
    assert seen == len(crude)


def test_derived_shards_refuse_pruned_shards(pruned, tmp_path):
    """build-conditioner and build-episodes index an event's steps as t - start: both refuse."""
    from data_tools.conditioner import build_conditioner
    from data_tools.episodes import build_episodes

    with pytest.raises(DataToolsError, match="--prune-static"):
        build_conditioner(pruned[0], tmp_path / "cond", progress=False)
    assert not (tmp_path / "cond").exists()
    with pytest.raises(DataToolsError, match="--prune-static"):
        build_episodes(pruned[0], tmp_path / "episodes", progress=False)
    assert not (tmp_path / "episodes").exists()


def test_inspect_recounts_the_pruning_entry(pruned, tmp_path):
    import shutil

    from data_tools.inspection import inspect_shards

    folder, index = pruned
    report = inspect_shards(folder)
    assert report["problems"] == []
    assert report["event_length"]["L1"]["max"] == index["pruning"]["kept_length"]["max"]
    copy = Path(shutil.copytree(folder, tmp_path / "copy"))
    tampered = json.loads((copy / "index.json").read_text())
    tampered["pruning"]["steps_dropped"] += 1
    (copy / "index.json").write_text(json.dumps(tampered))
    assert inspect_shards(copy)["problems"] == [
        "index.json pruning counts differ from the samples' kept_steps"]
