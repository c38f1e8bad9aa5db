"""inspect / stats: counts per level and cluster recounted from the tars, PNG histograms,
example captions per cluster, and a non-zero exit when index.json disagrees with the tars."""

from __future__ import annotations

import json
import shutil
from collections import Counter

from data_tools.inspection import inspect_shards
from data_tools.shardread import iter_samples


def test_report_recounts_the_tars(dt_tiny_shards):
    report = inspect_shards(dt_tiny_shards)
    metas = [json.loads(m["json"]) for _, _, m in iter_samples(dt_tiny_shards)]
    assert report["problems"] == []
    assert report["total_samples"] == len(metas) and report["levels"] == {"L1": len(metas)}
    assert report["vl_cluster_counts"] == report["action_cluster_counts"] == {"0": len(metas)}
    lengths = [m["end"] - m["start"] for m in metas]
    assert report["event_length"]["L1"]["min"] == min(lengths)
    assert report["event_length"]["L1"]["max"] == max(lengths)
    top = [c for c, _ in Counter(m["caption"] for m in metas).most_common(3)]
    assert report["vl_examples"]["0"] == top


def test_cli_prints_counts_examples_and_writes_pngs(dt_tiny_shards, dt_cli, tmp_path):
    plots = tmp_path / "plots"
    proc = dt_cli("inspect", "--shards", dt_tiny_shards, "--plots", plots)
    assert proc.returncode == 0, proc.stderr
    assert "per level" in proc.stdout and "VL cluster 0:" in proc.stdout
    assert "index.json agrees with the tars" in proc.stdout
    for name in ("lengths.png", "lengths_by_action_cluster.png"):
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    proc = dt_cli("stats", "--shards", dt_tiny_shards, "--no-plots", "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 0 and report["plots"] == [] and report["levels"]["L1"] > 0


def test_index_that_disagrees_with_the_tars_fails(dt_tiny_shards, dt_cli, tmp_path):
    shards = shutil.copytree(dt_tiny_shards, tmp_path / "edited")
    index = json.loads((shards / "index.json").read_text())
    index["shards"][0]["samples"] += 1
    index["vl_cluster_counts"] = {"0": 1, "1": index["total_samples"] - 1}
    (shards / "index.json").write_text(json.dumps(index))
    proc = dt_cli("inspect", "--shards", shards, "--no-plots")
    assert proc.returncode == 1
    assert f"{index['shards'][0]['name']}: index.json says" in proc.stdout
    assert "vl_cluster_counts differ" in proc.stdout
