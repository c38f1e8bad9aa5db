"""cluster: the real offline caption encoder, determinism, semantic VL clusters, and the
assignments reaching the shards' json and index.json through build-shards --clusters."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from data_tools.cluster_run import run_clustering
from data_tools.clustering import kmeans_labels
from data_tools.errors import EventError
from data_tools.shardread import iter_samples
from data_tools.shards import build_shards
from data_tools.synthworld.captions import primitive_of
from data_tools import textenc


@pytest.fixture(scope="module")
def ds24(tmp_path_factory, dt_make_dataset):
    return dt_make_dataset(tmp_path_factory.mktemp("clu") / "ds", episodes=24, seed=5, regrasp_prob=0.3)


@pytest.fixture(scope="module")
def clusters(ds24, tmp_path_factory):
    out = tmp_path_factory.mktemp("clu") / "clusters.json"
    return out, run_clustering(ds24, out, vl_k=8, action_k=6, seed=0)


def test_the_encoder_is_the_real_offline_model():
    emb = textenc.encode(["grasp the red cube", "grip the blue cube", "let go of the green cube",
                          "grasp the red cube"])
    assert emb.shape == (4, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(emb[0], emb[3])
    assert emb[0] @ emb[1] > emb[0] @ emb[2]  # grasp ~ grip, not ~ let go


def test_same_seed_same_file_and_canonical_ids(ds24, clusters, tmp_path):
    path, result = clusters
    again = tmp_path / "again.json"
    run_clustering(ds24, again, vl_k=8, action_k=6, seed=0)
    assert again.read_bytes() == path.read_bytes()
    for level, info in result["levels"].items():
        for axis in ("vl", "action"):
            counts = [info[axis][c]["count"] for c in sorted(info[axis], key=int)]
            assert counts == sorted(counts, reverse=True), (level, axis)  # 0 = largest
    assert set(result["levels"]) == {"L1", "L2", "L3"}
    assert len(result["assignments"]) == sum(i["events"] for i in result["levels"].values())


def test_events_of_one_primitive_mostly_share_a_vl_cluster(clusters):
    _, result = clusters
    by_prim = defaultdict(Counter)
    for a in result["assignments"]:
        if a["level"] == "L1":
            by_prim[primitive_of(a["caption"])][a["vl_cluster"]] += 1
    share = {p: c.most_common(1)[0][1] / sum(c.values()) for p, c in by_prim.items()}
    assert share["grasp"] >= 0.6, share
    assert np.mean(list(share.values())) >= 0.6, share
    # Purity over all L1 events, far above what object-driven or random clusters give.
    purity = sum(max(Counter(p for p, c in by_prim.items() for _ in range(c[k])).values())
                 for k in {k for c in by_prim.values() for k in c}) / sum(sum(c.values()) for c in by_prim.values())
    assert purity >= 0.6, purity


def test_centring_is_what_makes_clusters_follow_the_action(ds24, tmp_path):
    def mean_share(centre):
        res = run_clustering(ds24, tmp_path / f"{centre}.json", levels=["L1"], vl_k=8, seed=0, centre=centre)
        by_prim = defaultdict(Counter)
        for a in res["assignments"]:
            by_prim[primitive_of(a["caption"])][a["vl_cluster"]] += 1
        return np.mean([c.most_common(1)[0][1] / sum(c.values()) for c in by_prim.values()])
    assert mean_share("episode") > mean_share("none") + 0.1


def test_build_shards_writes_clusters_into_samples_and_index(ds24, clusters, tmp_path):
    path, result = clusters
    out = tmp_path / "shards"
    index = build_shards(ds24, out, level="L1", clusters=path, samples_per_shard=32, progress=False)
    table = {(a["episode_index"], a["level"], a["index"]): (a["vl_cluster"], a["action_cluster"])
             for a in result["assignments"]}
    per_shard = defaultdict(lambda: (Counter(), Counter()))
    for shard, key, m in iter_samples(out, ("json",)):
        meta = json.loads(m["json"])
        want = table[(meta["episode_id"], meta["level"], meta["event_index"])]
        assert (meta["vl_cluster"], meta["action_cluster"]) == want, key
        per_shard[shard][0][want[0]] += 1
        per_shard[shard][1][want[1]] += 1
    as_json = lambda c: {str(k): c[k] for k in sorted(c)}
    for s in index["shards"]:
        assert s["vl_cluster"] == as_json(per_shard[s["name"]][0])
        assert s["action_cluster"] == as_json(per_shard[s["name"]][1])
    total_vl = sum((c[0] for c in per_shard.values()), Counter())
    total_act = sum((c[1] for c in per_shard.values()), Counter())
    on_disk = json.loads((out / "index.json").read_text())
    assert on_disk["vl_cluster_counts"] == as_json(total_vl) == {
        c: s["count"] for c, s in result["levels"]["L1"]["vl"].items()}
    assert on_disk["action_cluster_counts"] == as_json(total_act)
    assert len(total_vl) == 8 and len(total_act) == 6


def test_clustering_shards_gives_the_same_assignments(ds24, clusters, tmp_path):
    _, result = clusters
    shards = tmp_path / "plain"
    build_shards(ds24, shards, level="L1", progress=False)
    from_shards = run_clustering(shards, tmp_path / "s.json", vl_k=8, action_k=6, seed=0)
    assert from_shards["from"] == "shards" and set(from_shards["levels"]) == {"L1"}
    want = [a for a in result["assignments"] if a["level"] == "L1"]
    assert from_shards["assignments"] == want


def test_missing_assignment_is_an_error_naming_the_event(ds24, clusters, tmp_path):
    path, result = clusters
    partial = dict(result, assignments=[a for a in result["assignments"]
                                        if (a["episode_index"], a["level"]) != (3, "L1")])
    bad = tmp_path / "partial.json"
    bad.write_text(json.dumps(partial))
    with pytest.raises(EventError, match="no cluster assignment for .* episode 3, L1 event 0"):
        build_shards(ds24, tmp_path / "o", clusters=bad, progress=False)
    assert not (tmp_path / "o").exists()


def test_kmeans_labels_cap_k_and_are_canonical():
    x = np.array([[0.0], [0.0], [5.0], [5.0], [5.0], [9.0]])
    labels = kmeans_labels(x, 10, seed=0)  # only 3 distinct rows
    assert labels.tolist() == [1, 1, 0, 0, 0, 2]
