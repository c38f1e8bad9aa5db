"""Cluster-balanced mixing and length buckets."""

import math
from collections import Counter

import numpy as np
import pytest

from wallwm_pretrain.config import BalanceConfig, CaptionDropConfig, DataConfig
from wallwm_pretrain.data import EventLoader
from wallwm_pretrain.data.balance import ClusterBalance
from wallwm_pretrain.data.buckets import bucket_batches
from wallwm_pretrain.data.cookers import TrainSample

SIZES_VL = {0: 600, 1: 200, 2: 50}


def skewed(n_action=2):
    metas, joint = [], Counter()
    for v, n in SIZES_VL.items():
        for i in range(n):
            a = i % n_action if v else 0  # VL cluster 0 uses action cluster 0 only
            metas.append(({"vl_cluster": v, "action_cluster": a}, f"s{v}_{i}"))
            joint[(v, a)] += 1
    counts = lambda axis: {str(c): sum(n for va, n in joint.items() if va[axis] == c) for c in {va[axis] for va in joint}}  # noqa: E731
    return metas, joint, {"vl_cluster_counts": counts(0), "action_cluster_counts": counts(1)}


@pytest.mark.parametrize("alpha_vl, alpha_action", [(0.0, 1.0), (0.5, 1.0), (0.0, 0.0), (1.0, 0.3)])
def test_empirical_mix_matches_target(alpha_vl, alpha_action):
    metas, joint, index = skewed()
    balance = ClusterBalance(index, BalanceConfig(alpha_vl, alpha_action), seed=1)
    target = balance.target(joint)
    kept = Counter()
    epochs = 40
    for epoch in range(epochs):
        for meta, key in metas:
            if balance.keep(meta, key, epoch):
                kept[(meta["vl_cluster"], meta["action_cluster"])] += 1
    total = sum(kept.values())
    assert total == pytest.approx(epochs * len(metas) * balance.expected_fraction(joint), rel=0.05)
    for va, p in target.items():
        # multinomial share: 5 standard deviations, so the test fails on a wrong formula
        # (off by >10% here) but practically never by chance
        sigma = math.sqrt(p * (1 - p) / total)
        assert abs(kept[va] / total - p) < 5 * sigma + 1e-9, (va, kept[va] / total, p)


def test_alpha_zero_balances_vl_clusters():
    metas, joint, index = skewed(n_action=1)
    balance = ClusterBalance(index, BalanceConfig(0.0, 1.0), seed=0)
    target = balance.target(joint)
    assert [round(target[(v, 0)], 6) for v in SIZES_VL] == [round(1 / 3, 6)] * 3


def test_keep_decision_is_independent_of_the_reader_and_changes_per_epoch():
    metas, _, index = skewed()
    balance = ClusterBalance(index, BalanceConfig(0.0, 1.0), seed=0)
    a = [balance.keep(m, k, 0) for m, k in metas]
    b = [ClusterBalance(index, BalanceConfig(0.0, 1.0), seed=0).keep(m, k, 0) for m, k in metas]
    assert a == b
    assert a != [balance.keep(m, k, 1) for m, k in metas]


def test_unknown_cluster_is_an_error():
    _, _, index = skewed()
    balance = ClusterBalance(index, BalanceConfig(0.0, 1.0), seed=0)
    with pytest.raises(ValueError, match="cluster 7"):
        balance.keep({"vl_cluster": 7, "action_cluster": 0}, "k", 0)


def test_loader_balances_without_duplicates_across_ranks(tmp_path, shard_writer):
    clusters = [(0, 0)] * 24 + [(1, 0)] * 8
    folder = shard_writer(tmp_path / "s", [6] * 32, per_shard=4, clusters=clusters)
    cfg = DataConfig(shards=str(folder), batch_size=1, shuffle_buffer=4, max_frames=8, seed=5,
                     caption_drop=CaptionDropConfig(0.0, 0.0, 1, 2), balance=BalanceConfig(0.0, 1.0))
    per_rank = []
    for rank in range(2):
        loader = EventLoader(cfg, dp_rank=rank, dp_size=2)
        keys = []
        while loader.epoch == 0:
            keys += next(loader).keys
        per_rank.append(keys[:-1])  # the last batch read belongs to epoch 1
    both = per_rank[0] + per_rank[1]
    assert len(both) == len(set(both)), "no sample twice within an epoch"
    single = EventLoader(cfg)
    keys = []
    while single.epoch == 0:
        keys += next(single).keys
    assert sorted(keys[:-1]) == sorted(both), "the keep decisions do not depend on the rank split"
    vl1 = sum(k.startswith(("ep000008", "ep000009", "ep000010")) for k in both)
    assert vl1 == 8 and len(both) < 32  # the small cluster is kept whole, the large one thinned


def sample(n):
    return TrainSample(key=f"k{n}", frames=np.zeros((n, 1, 1, 1, 3), np.uint8), actions=np.ones((n, 1), np.float32),
                       state=np.zeros(1, np.float32), caption=np.ones(1, np.int64))


def test_buckets_cut_padding_and_lose_only_the_remainder():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 48, size=203).tolist()
    eff = lambda batches: sum(sum(b) for b in batches) / sum(len(b) * max(b) for b in batches)  # noqa: E731
    as_lengths = lambda batch: [s.length for s in batch]  # noqa: E731
    bucketed = list(bucket_batches((sample(n) for n in lengths), 8, [8, 16, 32], as_lengths))
    plain = [lengths[i : i + 8] for i in range(0, len(lengths) - 7, 8)]
    assert len(bucketed) == len(plain) == 203 // 8
    assert sum(len(b) for b in bucketed) == 200
    assert eff(bucketed) > eff(plain) + 0.15, (eff(bucketed), eff(plain))
    full_buckets = [b for b in bucketed[:-4] if max(b) <= 8]
    assert all(max(b) <= 8 for b in full_buckets)


def test_the_balance_signatures_resolve_for_typing_tools():
    """The module postpones its annotations; a broken one would only fail what reads the hints."""
    import typing

    from wallwm_pretrain.data import balance

    functions = [balance._counts, balance._unit, balance.window_spec, balance.balance_for]
    functions += [getattr(ClusterBalance, name) for name in (
        "__init__", "keep_probability", "target", "expected_fraction", "keep", "keep_ids", "sample_filter", "window_filter")]
    hints = {f.__name__: typing.get_type_hints(f) for f in functions}
    assert hints["window_spec"]["return"] == dict | None
    assert hints["balance_for"]["return"] == tuple[ClusterBalance | None, dict | None]


def test_the_stage_passes_unreadable_samples_on_and_marks_bad_cluster_ids():
    """A sample whose json cannot be read goes on unchanged (the cooker names it); one whose
    cluster ids are missing, of the wrong type or unknown is kept and marked; neither stops the
    stream. alpha = 0 on both axes over equal counts keeps everything else."""
    import json

    index = {"vl_cluster_counts": {"0": 5, "1": 5}, "action_cluster_counts": {"0": 5}}
    bal = ClusterBalance(index, BalanceConfig(alpha_vl=0.0, alpha_action=0.0), seed=0)

    def sample(key, meta):
        return {"__key__": key, "__url__": "s.tar", "json": meta if isinstance(meta, bytes) else json.dumps(meta).encode()}

    stream = [sample("unreadable", b"{not json"), sample("ok1", {"vl_cluster": 1, "action_cluster": 0}),
              sample("no_ids", {"caption": "x"}), sample("none_id", {"vl_cluster": None, "action_cluster": 0}),
              sample("unknown", {"vl_cluster": 7, "action_cluster": 0}), sample("ok2", {"vl_cluster": 0, "action_cluster": 0})]
    out = list(bal.sample_filter(iter(stream), epoch=0))
    assert [s["__key__"] for s in out] == ["unreadable", "ok1", "no_ids", "none_id", "unknown", "ok2"]
    assert out[0] == stream[0] and "__balance_error__" not in out[1] and "__balance_error__" not in out[5]
    assert out[2]["__balance_error__"].startswith("no usable cluster ids (KeyError: ")
    assert out[3]["__balance_error__"].startswith("no usable cluster ids (TypeError: ")
    assert out[4]["__balance_error__"] == ("no usable cluster ids (ValueError: cluster 7 is not in index.json's "
                                           "cluster counts)")


@pytest.mark.parametrize("index", [{"vl_cluster_counts": {"0": 3}}, {"action_cluster_counts": {"0": 3}},
                                   {"vl_cluster_counts": {"0": 3}, "action_cluster_counts": {"0": 0}}])
def test_counts_missing_on_either_axis_are_refused(index):
    with pytest.raises(ValueError, match=r"index.json has no cluster counts \(vl_cluster_counts / action_cluster_counts\)"):
        ClusterBalance(index, BalanceConfig(alpha_vl=0.5, alpha_action=0.5), seed=0)
