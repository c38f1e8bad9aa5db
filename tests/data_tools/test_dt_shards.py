"""build-shards: the sample contract, index.json, determinism and fidelity to the source."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
import webdataset as wds

from data_tools.errors import OutputExistsError
from sim.imageops import resize_area
from data_tools.lerobot import LeRobotV3Dataset
from data_tools.shards import build_shards

KEYS = {"json", "actions.npy", "state.npy", "states.npy", "frames.npy"}
META_TYPES = {"episode_id": int, "event_index": int, "level": str, "caption": str,
              "next_caption": str, "task": str, "start": int, "end": int, "fps": (int, float),
              "vl_cluster": int, "action_cluster": int, "parent_caption": str, "views": list}


def _samples(folder):
    """key -> {ext: bytes}, read with plain tarfile (independent of webdataset)."""
    out = {}
    for tar_path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                key, ext = m.name.split(".", 1)
                out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def _npy(b):
    return np.load(io.BytesIO(b), allow_pickle=False)


def test_samples_follow_the_contract(dt_tiny_shards):
    samples = _samples(dt_tiny_shards)
    assert samples
    for key, s in samples.items():
        assert set(s) == KEYS, key
        meta = json.loads(s["json"].decode("utf-8"))
        for field, typ in META_TYPES.items():
            assert isinstance(meta[field], typ), (key, field)
        assert key == f"ep{meta['episode_id']:06d}_{meta['level']}_{meta['event_index']:03d}"
        assert meta["level"] == "L1" and meta["views"] == ["overhead", "wrist"]
        assert (meta["vl_cluster"], meta["action_cluster"]) == (0, 0)
        T = meta["end"] - meta["start"]
        actions, state, states, frames = (_npy(s[k]) for k in ("actions.npy", "state.npy",
                                                               "states.npy", "frames.npy"))
        assert actions.dtype == np.float32 and actions.shape == (T, 4)
        assert state.dtype == np.float32 and state.shape == (8,)
        assert states.dtype == np.float32 and states.shape == (T, 8)
        assert frames.dtype == np.uint8 and frames.shape == (T, 2, 32, 32, 3)
        np.testing.assert_array_equal(state, states[0])


def test_samples_are_one_per_event_with_context(dt_tiny, dt_tiny_shards, dt_events):
    samples = _samples(dt_tiny_shards)
    events = dt_events(dt_tiny)
    l1 = [e for e in events if e["level"] == "L1"]
    assert len(samples) == len(l1)
    ds = LeRobotV3Dataset(dt_tiny)
    for e in l1:
        key = f"ep{e['episode_index']:06d}_L1_{e['index']:03d}"
        meta = json.loads(samples[key]["json"])
        assert (meta["start"], meta["end"], meta["caption"]) == (e["start"], e["end"], e["caption"])
        same_ep = {(x["level"], x["index"]): x for x in events if x["episode_index"] == e["episode_index"]}
        nxt = same_ep.get(("L1", e["index"] + 1))
        assert meta["next_caption"] == (nxt["caption"] if nxt else "")
        assert meta["parent_caption"] == same_ep[("L2", e["parent"])]["caption"]
        assert meta["task"] == same_ep[("L3", 0)]["caption"]
        cols = ds.read_columns(e["episode_index"], ["action", "observation.state"])
        np.testing.assert_array_equal(_npy(samples[key]["actions.npy"]), cols["action"][e["start"]:e["end"]])
        np.testing.assert_array_equal(_npy(samples[key]["states.npy"]),
                                      cols["observation.state"][e["start"]:e["end"]])


def test_frames_are_the_resized_decoded_video(dt_tiny, dt_tiny_shards):
    samples = _samples(dt_tiny_shards)
    ds = LeRobotV3Dataset(dt_tiny)
    meta = json.loads(samples["ep000002_L1_003"]["json"])
    frames = _npy(samples["ep000002_L1_003"]["frames.npy"])
    for v, key in enumerate(["observation.images.overhead", "observation.images.wrist"]):
        full = resize_area(ds.read_frames(2, key), 32)
        np.testing.assert_array_equal(frames[:, v], full[meta["start"]:meta["end"]])


def test_index_json_counts_match_the_tars(dt_tiny_shards):
    index = json.loads((dt_tiny_shards / "index.json").read_text())
    names = sorted(p.name for p in dt_tiny_shards.iterdir())
    assert names == sorted(["index.json"] + [s["name"] for s in index["shards"]])
    total = 0
    for shard in index["shards"]:
        with tarfile.open(dt_tiny_shards / shard["name"]) as tar:
            keys = {m.name.split(".", 1)[0] for m in tar.getmembers()}
        assert shard["samples"] == len(keys) <= 8
        assert shard["bytes"] == (dt_tiny_shards / shard["name"]).stat().st_size
        assert sum(shard["vl_cluster"].values()) == sum(shard["action_cluster"].values()) == len(keys)
        total += len(keys)
    assert index["total_samples"] == total == len(_samples(dt_tiny_shards))
    assert index["vl_cluster_counts"] == {"0": total} == index["action_cluster_counts"]
    for field, value in [("level", "L1"), ("seed", 0), ("image_size", 32), ("fps", 10),
                         ("action_dim", 4), ("state_dim", 8), ("views", ["overhead", "wrist"])]:
        assert index[field] == value, field
    assert index["format_version"] == 1 and index["source"].endswith("tiny")
    # webdataset itself groups the members into the same samples.
    urls = [str(dt_tiny_shards / s["name"]) for s in index["shards"]]
    assert sum(1 for _ in wds.WebDataset(urls, shardshuffle=False)) == total


def test_same_seed_byte_identical_other_seed_reordered(dt_tiny, dt_tiny_shards, tmp_path):
    again = tmp_path / "again"
    build_shards(dt_tiny, again, level="L1", seed=0, samples_per_shard=8, progress=False)
    for shard in dt_tiny_shards.glob("shard-*.tar"):
        assert (again / shard.name).read_bytes() == shard.read_bytes(), shard.name
    other = tmp_path / "other"
    build_shards(dt_tiny, other, level="L1", seed=1, samples_per_shard=8, progress=False)
    assert (other / "shard-000000.tar").read_bytes() != (dt_tiny_shards / "shard-000000.tar").read_bytes()
    assert _samples(other) == _samples(dt_tiny_shards)  # same samples, other order


def test_tar_headers_carry_no_run_specific_metadata(dt_tiny_shards):
    with tarfile.open(next(dt_tiny_shards.glob("shard-*.tar"))) as tar:
        for m in tar.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) == (0, 0, 0, "", "", 0o644)


def test_other_levels_and_sizes(dt_tiny, dt_events, tmp_path):
    index = build_shards(dt_tiny, tmp_path / "l2", level="L2", image_size=16, progress=False)
    l2 = [e for e in dt_events(dt_tiny) if e["level"] == "L2"]
    assert index["total_samples"] == len(l2)
    sample = next(iter(_samples(tmp_path / "l2").values()))
    meta = json.loads(sample["json"])
    assert _npy(sample["frames.npy"]).shape[1:] == (2, 16, 16, 3)
    assert meta["parent_caption"] == meta["task"]  # an L2 event's parent is the L3 task


def test_rebuild_replaces_shards_but_never_a_foreign_folder(dt_tiny, tmp_path):
    out = tmp_path / "shards"
    build_shards(dt_tiny, out, samples_per_shard=100, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard-000000.tar"]
    build_shards(dt_tiny, out, samples_per_shard=4, progress=False)
    assert len(list(out.glob("shard-*.tar"))) > 1
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="refusing to replace"):
        build_shards(dt_tiny, foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_index_stats_describe_the_samples(dt_tiny_shards):
    index = json.loads((dt_tiny_shards / "index.json").read_text())
    samples = _samples(dt_tiny_shards).values()
    for name, key, dim in [("action", "actions.npy", 4), ("state", "states.npy", 8)]:
        rows = np.concatenate([_npy(s[key]) for s in samples]).astype(np.float64)
        st = index["stats"][name]
        assert st["count"] == len(rows) and len(st["mean"]) == dim
        np.testing.assert_allclose(st["mean"], rows.mean(0), atol=1e-9)
        np.testing.assert_allclose(st["std"], rows.std(0), atol=1e-9)
        np.testing.assert_allclose(st["min"], rows.min(0))
        np.testing.assert_allclose(st["max"], rows.max(0))
