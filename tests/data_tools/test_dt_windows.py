"""cluster-windows: the windows it clusters are the unified cooker's (same keys, steps, history,
atomic caption), the ids land in each episode json in window order and are counted right in
index.json (bytes and sha256 still verify, other members byte for byte), re-runs do nothing,
other flags need --force, bad input is named, and the loader balances the result per window."""

from __future__ import annotations

import io
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from data_tools.episodes import build_episodes
from data_tools.errors import DataToolsError
from data_tools.shardread import iter_samples
from data_tools.window_clusters import cluster_items, cluster_windows, read_windows
from data_tools import textenc
from wallwm_pretrain.captions import decode_caption
from wallwm_pretrain.config import BalanceConfig, DataConfig
from wallwm_pretrain.data.cookers import Normalizer
from wallwm_pretrain.data.modes import make_cooker
from wallwm_pretrain.data.index import read_index as loader_index
from wallwm_pretrain.data.loader import EventLoader
from wallwm_pretrain.data.verify import verify_shards

pytestmark = pytest.mark.usefixtures("dt_one_thread")
H, M, K = 8, 2, 4
FLAGS = dict(horizon=H, history=M, frame_stride=K, vl_k=4, action_k=3, progress=False)
MEMBERS = ("json", "actions.npy", "state.npy", "states.npy", "frames.npy")


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def _members(folder: Path) -> dict[str, tuple[str, dict[str, bytes]]]:
    return {key: (shard, m) for shard, key, m in iter_samples(folder, MEMBERS)}


@pytest.fixture(scope="module")
def episodes(dt_tiny_shards, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("win") / "ep"
    build_episodes(dt_tiny_shards, out, samples_per_shard=2, progress=False)
    return out


@pytest.fixture(scope="module")
def clustered(episodes, tmp_path_factory) -> tuple[Path, dict]:
    out = Path(shutil.copytree(episodes, tmp_path_factory.mktemp("win") / "clustered"))
    return out, cluster_windows(out, **FLAGS)


def as_counts(pairs: Counter, axis: int) -> dict[str, int]:
    """index.json's form of the counts of one axis of (vl, action) pair counts."""
    out = Counter()
    for va, n in pairs.items():
        out[va[axis]] += n
    return {str(i): out[i] for i in sorted(out)}


def _decoded(members: dict[str, bytes], key: str, shard: str) -> dict:
    return {"__key__": key, "__url__": shard, "json": json.loads(members["json"]),
            **{name: _npy(members[name]) for name in MEMBERS[1:]}}


def test_the_windows_clustered_are_the_cookers(clustered):
    folder, _ = clustered
    episodes, items, history_captions = read_windows(folder, H, M, K, progress=False)
    members = _members(folder)
    data = DataConfig(shards=str(folder), mode="unified", chunk_horizon=H, history_latents=M)
    spec = {"horizon": H, "history": M, "frame_stride": K}
    cooker = make_cooker(data, 256, Normalizer(), frame_stride=K, window_clusters=spec)
    at = 0
    for ep in episodes:
        shard, m = members[ep.key]
        sample = _decoded(m, ep.key, shard)
        cooked = cooker(sample, epoch=0)
        assert [w.key for w in cooked] == [w.key for w in ep.windows]
        events, actions, states = sample["json"]["events"], sample["actions.npy"], sample["states.npy"]
        record = sample["json"]["windows"]
        for w, c, item, before in zip(ep.windows, cooked, items[at:at + len(ep.windows)], history_captions[at:]):
            np.testing.assert_array_equal(c.actions, actions[w.anchor:w.stop])
            np.testing.assert_array_equal(c.history_frames, sample["frames.npy"][w.history])
            assert decode_caption(c.caption) == item.caption == events[w.atomic]["caption"]
            # the trajectory clustered: history steps (clamped at 0) then the chunk, actions | states
            steps = np.concatenate([np.maximum(np.arange(w.anchor - M * K, w.anchor), 0), np.arange(w.anchor, w.stop)])
            np.testing.assert_array_equal(item.actions, np.concatenate([actions[steps], states[steps]], 1))
            cover = Counter(next(i for i, e in enumerate(events) if e["start"] <= s < e["end"])
                            for s in steps[:M * K])
            assert before == events[min(cover, key=lambda i: (-cover[i], i))]["caption"]
            assert c.clusters == (record["vl"][w.index], record["action"][w.index])
        at += len(ep.windows)
    assert at == len(items)


def test_ids_are_written_in_window_order_and_counted(clustered, episodes):
    folder, result = clustered
    episodes_read, items, history_captions = read_windows(folder, H, M, K, progress=False)
    vl, act = cluster_items(items, history_captions, 4, 3, 16, "episode", 0, textenc.encode)
    before, after = _members(episodes), _members(folder)
    index = loader_index(folder)
    verify_shards(folder, index, "sha256")
    per_shard, at, total = {}, 0, Counter()
    for ep in episodes_read:
        shard, m = after[ep.key]
        meta = json.loads(m["json"])
        n = len(ep.windows)
        assert meta["windows"] == {"horizon": H, "history": M, "frame_stride": K,
                                   "vl": vl[at:at + n].tolist(), "action": act[at:at + n].tolist()}
        old = json.loads(before[ep.key][1]["json"])
        assert {k: v for k, v in meta.items() if k != "windows"} == old
        for name in MEMBERS[1:]:
            assert m[name] == before[ep.key][1][name]
        per_shard.setdefault(shard, Counter()).update(zip(meta["windows"]["vl"], meta["windows"]["action"]))
        total.update(zip(meta["windows"]["vl"], meta["windows"]["action"]))
        at += n
    assert index["window_vl_cluster_counts"] == as_counts(total, 0)
    assert index["window_action_cluster_counts"] == as_counts(total, 1)
    for s in index["shards"]:
        assert s["windows"] is True
        assert s["window_vl_cluster"] == as_counts(per_shard[s["name"]], 0)
        assert s["window_action_cluster"] == as_counts(per_shard[s["name"]], 1)
    spec = index["windows"]
    assert spec["complete"] and spec["windows"] == len(items) and spec["episodes"] == len(episodes_read)
    assert (spec["horizon"], spec["history"], spec["frame_stride"], spec["vl_k"]) == (H, M, K, 4)
    sizes = [index["window_vl_cluster_counts"][c] for c in sorted(index["window_vl_cluster_counts"], key=int)]
    assert sizes == sorted(sizes, reverse=True) and len(sizes) > 1  # canonical ids, 0 = largest
    assert result["done"] == len(index["shards"])


def test_reruns_do_nothing_other_flags_need_force(clustered, episodes, dt_tiny_shards, tmp_path):
    folder, _ = clustered
    again = Path(shutil.copytree(episodes, tmp_path / "again"))
    cluster_windows(again, **FLAGS, workers=2)
    names = [s["name"] for s in loader_index(folder)["shards"]]
    assert all((again / n).read_bytes() == (folder / n).read_bytes() for n in names)
    snapshot = {n: (again / n).read_bytes() for n in names}
    assert cluster_windows(again, **FLAGS)["done"] == 0
    # build-episodes on the same input still finds its output (now clustered) up to date
    assert build_episodes(dt_tiny_shards, again, samples_per_shard=2, progress=False)["reused"] is True
    assert {n: (again / n).read_bytes() for n in names} == snapshot
    with pytest.raises(DataToolsError, match=r"already carry window clusters for chunk_horizon 8, history_latents 2.*"
                                             r"--force to re-cluster them for chunk_horizon 16, history_latents 2"):
        cluster_windows(again, **{**FLAGS, "horizon": 16})
    assert {n: (again / n).read_bytes() for n in names} == snapshot  # nothing touched
    cluster_windows(again, **{**FLAGS, "horizon": 16}, force=True)
    index = loader_index(again)
    verify_shards(again, index, "sha256")
    assert index["windows"]["horizon"] == 16
    for _, m in _members(again).values():
        meta = json.loads(m["json"])
        assert meta["windows"]["horizon"] == 16
        assert len(meta["windows"]["vl"]) == -(-len(_npy(m["actions.npy"])) // 16)


def test_bad_input_is_named(dt_tiny_shards, episodes, tmp_path, dt_cli):
    with pytest.raises(DataToolsError, match="kind 'event'; cluster-windows reads episode shards"):
        cluster_windows(dt_tiny_shards, **FLAGS)
    with pytest.raises(DataToolsError, match="--horizon 6 is not a multiple of --frame-stride 4"):
        cluster_windows(episodes, **{**FLAGS, "horizon": 6})
    proc = dt_cli("cluster-windows", "--shards", tmp_path / "nowhere", "--horizon", "8", "--history", "2", "--quiet")
    assert proc.returncode == 1 and "is not a folder" in proc.stderr
    proc = dt_cli("cluster-windows", "--help")
    assert proc.returncode == 0 and "python -m data_tools cluster-windows --shards" in proc.stdout


def test_the_loader_balances_the_result_per_window(clustered):
    folder, _ = clustered
    cfg = DataConfig(shards=str(folder), mode="unified", chunk_horizon=H, history_latents=M, batch_size=1,
                     shuffle_buffer=0, length_buckets=[], balance=BalanceConfig(0.0, 0.0))
    loader = EventLoader(cfg, frame_stride=K, caption_max_bytes=32)
    assert loader.balance.unit == "window"
    keys = []
    while True:
        batch = next(loader)
        if loader.epoch:
            break
        keys += batch.keys
    metas = {k: json.loads(m["json"]) for k, (_, m) in _members(folder).items()}
    want = [f"{k}/w{i * H}" for k, meta in metas.items() for i, (v, a) in
            enumerate(zip(meta["windows"]["vl"], meta["windows"]["action"]))
            if loader.balance.keep_ids(v, a, f"{k}/w{i * H}", 0)]
    assert sorted(keys) == sorted(want) and 0 < len(keys) < sum(len(m["windows"]["vl"]) for m in metas.values())
