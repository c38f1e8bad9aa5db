"""The loader's per-window cluster balance in unified mode: on episode shards whose windows carry
cluster ids (``data_tools cluster-windows``), each cooked window is kept by the keep rule of
``balance.py`` on its own clusters and key; the kept stream follows the target mix, does not
depend on ranks, workers or a resume, shards clustered for other windows fail at start naming
both, and shards without window clusters keep the per-episode balance."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds

from wallwm_pretrain.config import BalanceConfig, ConfigError, DataConfig
from wallwm_pretrain.data import EventLoader, SampleError
from wallwm_pretrain.data.balance import ClusterBalance

K, H, M = 2, 4, 1  # frame stride, chunk horizon, history latents
EPISODES, STEPS, PER_SHARD = 40, 16, 10  # 4 windows per episode, 4 shards


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def window_ids(g: int) -> tuple[int, int]:
    """(vl, action) of the g-th window overall: VL 0 has 3/4 of the windows (two action
    clusters), VL 1 and 2 one eighth each (action 0)."""
    r = g % 8
    return (0, r % 2) if r < 6 else (r - 5, 0)


def write_episodes(folder: Path, windows: bool = True, complete: bool = True, drop_windows_of: str = "") -> dict:
    """Episode shards whose json carries ``windows`` for (H, M, K); returns key -> (vl, action)."""
    folder.mkdir(parents=True)
    truth, shards, g = {}, [], 0
    for s in range(EPISODES // PER_SHARD):
        name = f"shard-{s:06d}.tar"
        with wds.TarWriter(str(folder / name)) as sink:
            for e in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                key = f"ep{e:06d}_L1"
                ids = [window_ids(g + i) for i in range(STEPS // H)]
                g += len(ids)
                truth.update({f"{key}/w{i * H}": v for i, v in enumerate(ids)})
                meta = {"episode_id": e, "level": "L1", "task": "stack", "caption": "stack", "fps": 10,
                        "start": 0, "end": STEPS, "length": STEPS, "vl_cluster": e % 3, "action_cluster": 0,
                        "events": [{"caption": "reach", "start": 0, "end": 6, "event_index": 0, "level": "L1"},
                                   {"caption": "grasp", "start": 6, "end": STEPS, "event_index": 1, "level": "L1"}]}
                if windows and key != drop_windows_of:
                    meta["windows"] = {"horizon": H, "history": M, "frame_stride": K,
                                       "vl": [v for v, _ in ids], "action": [a for _, a in ids]}
                steps = np.arange(STEPS, dtype=np.float32)[:, None]
                sink.write({"__key__": key, "json": json.dumps(meta).encode(), "actions.npy": _npy(steps),
                            "state.npy": _npy(steps[0]), "states.npy": _npy(steps),
                            "frames.npy": _npy(np.full((STEPS, 1, 2, 2, 3), e, np.uint8))})
        data = (folder / name).read_bytes()
        shards.append({"name": name, "samples": PER_SHARD, "bytes": len(data),
                       "sha256": hashlib.sha256(data).hexdigest()})
    count = lambda axis, ids: {str(c): n for c, n in sorted(Counter(v[axis] for v in ids).items())}  # noqa: E731
    episode_ids = [(e % 3, 0) for e in range(EPISODES)]
    index = {"kind": "episode", "level": "L1", "shards": shards, "total_samples": EPISODES, "fps": 10,
             "image_size": 2, "views": ["cam0"], "action_dim": 1, "state_dim": 1,
             "vl_cluster_counts": count(0, episode_ids), "action_cluster_counts": count(1, episode_ids)}
    if windows:
        index["windows"] = {"horizon": H, "history": M, "frame_stride": K, "complete": complete}
        index["window_vl_cluster_counts"] = count(0, truth.values())
        index["window_action_cluster_counts"] = count(1, truth.values())
    (folder / "index.json").write_text(json.dumps(index))
    return truth


def cfg(folder: Path, **kw) -> DataConfig:
    # the mode as a config file gives it: equal to the literal "unified", but another object
    base = dict(shards=str(folder), mode="".join(["uni", "fied"]), chunk_horizon=H, history_latents=M, batch_size=1,
                shuffle_buffer=4, length_buckets=[], seed=3, balance=BalanceConfig(0.0, 0.5))
    return DataConfig(**{**base, **kw})


def balance_of(index: dict, data: DataConfig):
    """The balance the loader applies: the data mode's (``data/modes``), which for unified mode
    balances per window."""
    from wallwm_pretrain.data.modes import mode_of

    return mode_of(data.mode).balance(index, data, K)


def epoch_keys(loader: EventLoader, epochs: int = 1) -> list[list[str]] | list[str]:
    """Every window key the loader yields in each of its first ``epochs`` epochs (batch size 1:
    none lost to batching); after ``next`` returns, ``loader.epoch`` is the batch's epoch."""
    out = [[] for _ in range(epochs)]
    while True:
        keys = next(loader).keys
        if loader.epoch >= epochs:
            return out if epochs > 1 else out[0]
        out[loader.epoch] += keys


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("win") / "ep"
    return folder, write_episodes(folder)


def test_the_loader_keeps_exactly_the_windows_the_rule_keeps(clustered):
    folder, truth = clustered
    loader = EventLoader(cfg(folder), frame_stride=K, caption_max_bytes=16)
    assert loader.balance.unit == "window" and loader.window_spec == {"horizon": H, "history": M, "frame_stride": K}
    rule = ClusterBalance(json.loads((folder / "index.json").read_text()), BalanceConfig(0.0, 0.5), seed=3,
                          unit="window")
    for epoch, got in enumerate(epoch_keys(loader, 2)):
        assert len(got) == len(set(got))
        want = {k for k, ids in truth.items() if rule.keep_ids(*ids, k, epoch)}
        assert set(got) == want
        # whole episodes are not kept or dropped together: the decision is per window
        assert any(0 < sum(k.startswith(f"ep{e:06d}") for k in got) < STEPS // H for e in range(EPISODES))


@pytest.mark.parametrize("alpha_vl, alpha_action", [(0.0, 1.0), (0.0, 0.0), (0.5, 0.3)])
def test_kept_windows_follow_the_target_mix(clustered, alpha_vl, alpha_action):
    folder, truth = clustered
    index = json.loads((folder / "index.json").read_text())
    balance = ClusterBalance(index, BalanceConfig(alpha_vl, alpha_action), seed=1, unit="window")
    joint = Counter(truth.values())
    target = balance.target(joint)
    kept, epochs = Counter(), 300
    for epoch in range(epochs):
        for key, ids in truth.items():
            kept[ids] += balance.keep_ids(*ids, key, epoch)
    total = sum(kept.values())
    assert total == pytest.approx(epochs * len(truth) * balance.expected_fraction(joint), rel=0.05)
    for va, p in target.items():
        sigma = math.sqrt(p * (1 - p) / total)
        assert abs(kept[va] / total - p) < 5 * sigma + 1e-9, (va, kept[va] / total, p)
    if alpha_vl == 0.0 and alpha_action == 1.0:  # VL clusters equally often
        vl = Counter()
        for (v, _), n in kept.items():
            vl[v] += n
        assert all(abs(vl[v] / total - 1 / 3) < 0.03 for v in range(3)), vl


def test_ranks_workers_and_a_resume_see_the_same_windows(clustered):
    folder, _ = clustered
    single = epoch_keys(EventLoader(cfg(folder), frame_stride=K, caption_max_bytes=16))
    ranks = [epoch_keys(EventLoader(cfg(folder), frame_stride=K, caption_max_bytes=16, dp_rank=r, dp_size=2))
             for r in range(2)]
    assert not set(ranks[0]) & set(ranks[1]) and sorted(ranks[0] + ranks[1]) == sorted(single)
    workers = epoch_keys(EventLoader(cfg(folder, num_workers=2), frame_stride=K, caption_max_bytes=16))
    assert sorted(workers) == sorted(single)

    first = EventLoader(cfg(folder), frame_stride=K, caption_max_bytes=16)
    for _ in range(5):
        next(first)
    state = first.state_dict()
    expected = [next(first).keys for _ in range(6)]
    second = EventLoader(cfg(folder), frame_stride=K, caption_max_bytes=16)
    second.load_state_dict(state)
    assert [next(second).keys for _ in range(6)] == expected


@pytest.mark.parametrize("override, ours", [
    (dict(chunk_horizon=8), "chunk_horizon 8, history_latents 1, frame_stride 2"),
    (dict(history_latents=3), "chunk_horizon 4, history_latents 3, frame_stride 2"),
])
def test_windows_clustered_for_other_windows_fail_at_start_naming_both(clustered, override, ours):
    folder, _ = clustered
    with pytest.raises(ConfigError) as exc:
        EventLoader(cfg(folder, **override), frame_stride=K)
    message = str(exc.value)
    assert "clustered for chunk_horizon 4, history_latents 1, frame_stride 2" in message
    assert f"this run cuts windows of {ours}" in message and "cluster-windows" in message
    with pytest.raises(ConfigError, match="frame_stride 4"):
        EventLoader(cfg(folder), frame_stride=4)
    # the natural mix reads no clusters: nothing to refuse
    EventLoader(cfg(folder, balance=BalanceConfig(1.0, 1.0), **override), frame_stride=K)


def test_an_unfinished_clustering_fails_at_start(tmp_path):
    write_episodes(tmp_path / "ep", complete=False)
    with pytest.raises(ConfigError, match="window clustering did not finish"):
        EventLoader(cfg(tmp_path / "ep"), frame_stride=K)


def test_an_episode_without_window_ids_is_a_bad_sample_naming_it(tmp_path):
    write_episodes(tmp_path / "ep", drop_windows_of="ep000004_L1")
    loader = EventLoader(cfg(tmp_path / "ep", shuffle_buffer=0), frame_stride=K, caption_max_bytes=16)
    with pytest.raises(SampleError, match=r"sample ep000004_L1: key 'json' has no 'windows'.*cluster-windows"):
        epoch_keys(loader)


def test_shards_without_window_clusters_keep_the_per_episode_balance(tmp_path, caplog):
    folder = tmp_path / "ep"
    write_episodes(folder, windows=False)
    with caplog.at_level(logging.WARNING, logger="wallwm_pretrain.data.balance"):
        loader = EventLoader(cfg(folder, balance=BalanceConfig(0.0, 1.0)), frame_stride=K, caption_max_bytes=16)
    assert loader.balance.unit == "sample" and loader.window_spec is None
    warned = [r.getMessage() for r in caplog.records if r.name == "wallwm_pretrain.data.balance"]
    assert len(warned) == 1 and "carry no cluster ids" in warned[0]
    assert f"python -m data_tools cluster-windows --shards {folder} --horizon {H} --history {M}" in warned[0]
    got = Counter(k.partition("/")[0] for k in epoch_keys(loader))
    rule = ClusterBalance(json.loads((folder / "index.json").read_text()), BalanceConfig(0.0, 1.0), seed=3)
    want = {f"ep{e:06d}_L1" for e in range(EPISODES)
            if rule.keep({"vl_cluster": e % 3, "action_cluster": 0}, f"ep{e:06d}_L1", 0)}
    assert set(got) == want and set(got.values()) == {STEPS // H}  # whole episodes, every window


@pytest.mark.parametrize("windows", [[4, 1, 2], {"horizon": True, "history": 1, "frame_stride": 2},
                                     {"horizon": "4", "history": 1, "frame_stride": 2}, {"horizon": 4, "history": 1}])
def test_a_malformed_windows_record_is_named(tmp_path, windows):
    """index.json's 'windows' must be an object of integers (not booleans, not strings)."""
    from wallwm_pretrain.data.errors import ShardError

    index = {"windows": windows, "vl_cluster_counts": {"0": 1}, "action_cluster_counts": {"0": 1}}
    with pytest.raises(ShardError, match=r"index.json: 'windows' must be an object with integer horizon, history, "
                                         r"frame_stride"):
        balance_of(index, cfg(tmp_path))


def test_window_clusters_recorded_without_their_counts_are_named(tmp_path):
    from wallwm_pretrain.data.errors import ShardError
    from wallwm_pretrain.windows import spec_of

    index = {"windows": {**spec_of(H, M, K), "complete": True},
             "vl_cluster_counts": {"0": 1}, "action_cluster_counts": {"0": 1}}  # per-event counts only
    with pytest.raises(ShardError, match=r"index.json records window clusters but index.json has no cluster counts "
                                         r"\(window_vl_cluster_counts"):
        balance_of(index, cfg(tmp_path))


def test_the_window_filter_passes_other_items_and_windows_without_ids():
    """Only a window with cluster ids is kept or dropped; a window without ids and anything that
    is not a window (an error marker) pass as they are."""
    from wallwm_pretrain.data.balance import ClusterBalance
    from wallwm_pretrain.data.cookers import TrainSample

    counts = {"window_vl_cluster_counts": {"0": 1, "1": 10**6}, "window_action_cluster_counts": {"0": 1}}
    bal = ClusterBalance(counts, BalanceConfig(0.0, 1.0), seed=0, unit="window")  # cluster 1: p = 1e-6

    def window(key, clusters):
        z = np.zeros(0)
        return TrainSample(key, z, z, z, z, clusters=clusters)

    marker = {"__key__": "x", "__balance_error__": "bad"}
    items = [marker, window("free", None), window("rare", (0, 0)), window("common", (1, 0))]
    assert [getattr(i, "key", "marker") for i in bal.window_filter(iter(items), epoch=0)] == ["marker", "free", "rare"]


def test_event_mode_balances_per_sample_without_a_word(tmp_path, caplog):
    """The hint about cluster-windows is for unified mode only."""

    index = {"vl_cluster_counts": {"0": 1}, "action_cluster_counts": {"0": 1}}
    with caplog.at_level(logging.DEBUG, logger="wallwm_pretrain.data.balance"):
        balance, spec = balance_of(index, cfg(tmp_path, mode="".join(["ev", "ent"])))
    assert balance.unit == "sample" and spec is None
    assert not [r for r in caplog.records if r.name == "wallwm_pretrain.data.balance"]


def test_chunk_mode_over_clustered_episodes_balances_per_sample(tmp_path):
    """Chunk mode may read episode shards; their window clusters are unified mode's, not its own."""
    from wallwm_pretrain.windows import spec_of

    index = {"windows": {**spec_of(H, M, K), "complete": True}, "vl_cluster_counts": {"0": 1},
             "action_cluster_counts": {"0": 1}, "window_vl_cluster_counts": {"0": 1},
             "window_action_cluster_counts": {"0": 1}}
    balance, spec = balance_of(index, cfg(tmp_path, mode="chunk"))
    assert balance.unit == "sample" and spec is None
    balance, spec = balance_of(index, cfg(tmp_path))
    assert balance.unit == "window" and spec == spec_of(H, M, K)
