"""Vision-language and action clusters of events, for the loader's cluster-balanced mixing.

*VL clusters*: k-means over caption embeddings (``textenc``). Captions of one episode share its
objects and scene ("the red cube", "the blue bowl"), and a small sentence encoder weighs those
words heavily, so raw embeddings group events by object colour rather than by what happens.
With ``centre="episode"`` (the default) each event's embedding has the mean embedding of its
episode's events of the same level subtracted first: what the events share drops out and what
distinguishes them (reach vs grasp vs regrasp) remains. Levels with one event per episode (L3)
are centred on the level's global mean instead.

*Action clusters*: each event's actions [T, A] are linearly resampled to ``resample`` steps
(so events of different lengths compare by shape), standardised per dimension with the
level's statistics, flattened, and clustered with k-means.

Each level is clustered separately. Cluster ids are made canonical (0 = largest cluster, ties
by first member in (episode, index) order), so the same inputs and seed give the same file.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from .errors import DataToolsError


@dataclass
class EventItem:
    episode_index: int
    level: str
    index: int
    caption: str
    actions: np.ndarray  # float32 [T, A]


def centred_embeddings(items: list[EventItem], emb: np.ndarray, centre: str) -> np.ndarray:
    x = emb.astype(np.float64).copy()
    if centre == "episode":
        groups = defaultdict(list)
        for i, it in enumerate(items):
            groups[it.episode_index].append(i)
        singles = [g[0] for g in groups.values() if len(g) == 1]
        means = {}
        for ep, rows in groups.items():
            means[ep] = x[rows].mean(0) if len(rows) > 1 else x[singles].mean(0)
        x = x - np.stack([means[it.episode_index] for it in items])
    elif centre != "none":
        raise DataToolsError(f"unknown centring {centre!r} (choose episode or none)")
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 1e-9, norm, 1.0)


def action_features(items: list[EventItem], resample: int) -> np.ndarray:
    if resample < 2:
        raise DataToolsError(f"--resample must be at least 2 (got {resample})")
    widths = {it.actions.shape[1] for it in items}
    if len(widths) != 1:
        raise DataToolsError(f"events have actions of different widths {sorted(widths)}")
    allsteps = np.concatenate([it.actions for it in items]).astype(np.float64)
    mean, std = allsteps.mean(0), allsteps.std(0)
    std = np.where(std > 1e-8, std, 1.0)
    rows = []
    for it in items:
        a = (it.actions.astype(np.float64) - mean) / std
        t = np.linspace(0.0, len(a) - 1, resample)
        rows.append(np.stack([np.interp(t, np.arange(len(a)), a[:, d]) for d in range(a.shape[1])], 1))
    return np.stack(rows).reshape(len(items), -1)


def kmeans_labels(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means labels renumbered canonically (0 = largest; ties by first member)."""
    from sklearn.cluster import KMeans

    distinct = len(np.unique(np.round(x, 6), axis=0))
    k = max(1, min(k, distinct))
    if k == 1:
        return np.zeros(len(x), dtype=np.int64)
    raw = KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(x)
    sizes = Counter(raw.tolist())
    first = {}
    for i, c in enumerate(raw.tolist()):
        first.setdefault(c, i)
    order = sorted(sizes, key=lambda c: (-sizes[c], first[c]))
    remap = {c: new for new, c in enumerate(order)}
    return np.array([remap[c] for c in raw.tolist()], dtype=np.int64)


def cluster_level(items: list[EventItem], vl_k: int, action_k: int, seed: int, resample: int,
                  centre: str, encode) -> tuple[np.ndarray, np.ndarray]:
    """(vl labels, action labels) for the events of one level, in ``items`` order."""
    emb = encode([it.caption for it in items])
    vl = kmeans_labels(centred_embeddings(items, emb, centre), vl_k, seed)
    act = kmeans_labels(action_features(items, resample), action_k, seed)
    return vl, act


def summarise(items: list[EventItem], labels: np.ndarray, examples: int = 3) -> dict:
    """cluster id -> {count, examples: most common captions}."""
    out = {}
    for c in sorted(set(labels.tolist())):
        caps = Counter(it.caption for it, l in zip(items, labels) if l == c)
        out[str(c)] = {"count": int(sum(caps.values())),
                       "examples": [t for t, _ in caps.most_common(examples)]}
    return out
