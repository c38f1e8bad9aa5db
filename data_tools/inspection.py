"""Summarise a shard folder from the samples themselves and check it against index.json.

Counts per level, VL cluster, action cluster and shard, event-length statistics, example
captions per cluster, and PNG histograms of event lengths (per level, and per action cluster).
Everything is recounted from the tars' json members, so a disagreement with index.json (a
shard replaced by hand, a truncated tar) shows up as a problem instead of passing silently.
Reading only the json members keeps this at the speed of reading the tar headers. Lengths are
the steps a sample holds (``len(kept_steps)`` in a folder built with ``--prune-static``, whose
``pruning`` counts are recounted too).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from .prune import Pruning, count_pruning
from .shardread import file_url, iter_samples, location, read_index


def _counts(c: Counter) -> dict[str, int]:
    return {str(k): c[k] for k in sorted(c)}


def _examples(caps: dict[int, Counter], n: int) -> dict[str, list[str]]:
    return {str(c): [t for t, _ in caps[c].most_common(n)] for c in sorted(caps)}


def inspect_shards(folder: str | Path, examples: int = 3) -> dict:
    folder = location(str(folder))
    index = read_index(folder)
    levels, vl, act = Counter(), Counter(), Counter()
    per_shard = defaultdict(lambda: {"samples": 0, "vl_cluster": Counter(), "action_cluster": Counter()})
    lengths = defaultdict(list)
    lengths_by_action = defaultdict(list)
    vl_caps, act_caps = defaultdict(Counter), defaultdict(Counter)
    problems = []
    metas = []  # (where, meta) of a pruned folder, for the recount of index.json's "pruning"
    for shard, key, m in iter_samples(folder, ("json",)):
        if "json" not in m:
            problems.append(f"{file_url(folder, shard)}: sample {key} has no json member")
            continue
        meta = json.loads(m["json"])
        v, a = int(meta.get("vl_cluster", 0)), int(meta.get("action_cluster", 0))
        length = int(meta["end"]) - int(meta["start"])
        if "kept_steps" in meta:
            length = len(meta["kept_steps"])
            metas.append((f"{file_url(folder, shard)}: sample {key}", meta))
        levels[meta["level"]] += 1
        vl[v] += 1
        act[a] += 1
        s = per_shard[shard]
        s["samples"] += 1
        s["vl_cluster"][v] += 1
        s["action_cluster"][a] += 1
        lengths[meta["level"]].append(length)
        lengths_by_action[a].append(length)
        vl_caps[v][meta["caption"]] += 1
        act_caps[a][meta["caption"]] += 1
    for s in index.get("shards", []):
        got = per_shard.get(s["name"], {"samples": 0, "vl_cluster": Counter(), "action_cluster": Counter()})
        if got["samples"] != s.get("samples"):
            problems.append(f"{s['name']}: index.json says {s.get('samples')} samples, the tar holds "
                            f"{got['samples']}")
        for field in ("vl_cluster", "action_cluster"):
            if _counts(got[field]) != {str(k): v for k, v in s.get(field, {}).items()}:
                problems.append(f"{s['name']}: {field} counts in index.json differ from the tar")
    total = sum(levels.values())
    if index.get("total_samples") != total:
        problems.append(f"index.json total_samples {index.get('total_samples')} != {total} in the tars")
    for field, counter in (("vl_cluster_counts", vl), ("action_cluster_counts", act)):
        if index.get(field) is not None and index[field] != _counts(counter):
            problems.append(f"index.json {field} differ from the tars")
    entry = index.get("pruning")
    if entry is not None:
        recount = count_pruning(metas, Pruning(entry.get("threshold", 0.0), entry.get("min_steps", 1)))
        if any(entry.get(k) != v for k, v in recount.items()):
            problems.append("index.json pruning counts differ from the samples' kept_steps")
    return {
        "shards": str(folder), "total_samples": total, "levels": _counts(levels),
        "vl_cluster_counts": _counts(vl), "action_cluster_counts": _counts(act),
        "event_length": {lv: {"min": int(min(x)), "max": int(max(x)),
                              "mean": round(float(np.mean(x)), 2),
                              "median": float(np.median(x))} for lv, x in sorted(lengths.items())},
        "vl_examples": _examples(vl_caps, examples),
        "action_examples": _examples(act_caps, examples),
        "problems": problems,
        "_lengths": {lv: x for lv, x in lengths.items()},
        "_lengths_by_action": dict(lengths_by_action),
    }


def save_plots(report: dict, out: Path) -> list[Path]:
    """lengths.png (histogram per level) and lengths_by_action_cluster.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data, label in (("lengths.png", report["_lengths"], "level"),
                              ("lengths_by_action_cluster.png", report["_lengths_by_action"],
                               "action cluster")):
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        top = max(max(x) for x in data.values()) if data else 1
        bins = np.arange(0, top + 2) if top <= 80 else 40
        for k in sorted(data):
            ax.hist(data[k], bins=bins, alpha=0.6, label=f"{label} {k} (n={len(data[k])})")
        ax.set_xlabel("event length (frames)")
        ax.set_ylabel("events")
        ax.set_title(f"event lengths by {label}: {report['shards']}", fontsize=9)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        written.append(out / name)
    return written


def format_report(report: dict, plots: list[Path]) -> str:
    lines = [f"{report['shards']}: {report['total_samples']} samples",
             f"  per level:           {json.dumps(report['levels'])}",
             f"  VL cluster counts:   {json.dumps(report['vl_cluster_counts'])}",
             f"  action cluster counts: {json.dumps(report['action_cluster_counts'])}"]
    for lv, st in report["event_length"].items():
        lines.append(f"  {lv} event length: min {st['min']}, median {st['median']:g}, "
                     f"mean {st['mean']}, max {st['max']}")
    for title, key in (("VL cluster", "vl_examples"), ("action cluster", "action_examples")):
        for c, caps in report[key].items():
            lines.append(f"  {title} {c}: " + " | ".join(caps))
    lines += [f"  plot: {p}" for p in plots]
    lines += [f"PROBLEM {p}" for p in report["problems"]]
    lines.append("index.json agrees with the tars" if not report["problems"]
                 else f"{len(report['problems'])} problem(s)")
    return "\n".join(lines)
