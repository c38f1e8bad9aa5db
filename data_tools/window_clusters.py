"""Re-cluster episode shards on the history-conditioned windows unified mode trains on
(``cluster-windows``), for the loader's per-window balance (stage 5 of the recipe).

An episode sample's own clusters (the most common of its events') say little about its windows,
and balancing whole episodes by them thins the stream badly. Here every window the unified
cooker makes (``wallwm_pretrain.windows.episode_windows``: the same function, so the windows
are the loader's) gets its own clusters, with the existing method (``clustering``):

* **vision-language**: the caption embedding of the window's atomic event (the event covering
  most of the window, the caption the loader trains it with) next to that of its history's
  event (the event covering most of the M * K history steps: what came before), each centred per
  episode as ``cluster`` does (``--centre``) and of unit length; k-means (``--vl-k``). A grasp
  after a reach and a grasp after a failed grasp (a regrasp) fall apart.
* **action**: the window's trajectory conditioned on its history: per step, the actions and
  states of the history steps (clamped at the episode start, as the cooker clamps its frames)
  followed by those of the chunk, resampled to ``--resample`` steps and standardised per
  dimension; k-means (``--action-k``).

Ids are canonical (0 = largest cluster) and the result is deterministic for the same shards and
flags. The ids go into each episode json as ``windows: {horizon, history, frame_stride, vl: [..],
action: [..]}`` (one id per window, in anchor order), and ``index.json`` gains ``windows`` (what
was clustered, ``complete``), ``window_vl_cluster_counts`` / ``window_action_cluster_counts``
and per shard ``window_vl_cluster`` / ``window_action_cluster``. The shards are rewritten in
place by the engine of ``encode-latents`` (``augment``: crash-safe, resumable, sha256 and bytes
kept right; the rewritten json member follows the sample's other members, which stay byte for
byte).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wallwm_pretrain import windows as rule

from .augment import augment_shards, write_index
from .clustering import EventItem, action_features, centred_embeddings, kmeans_labels, summarise
from .derive import counts, member_array, open_source
from .errors import DataToolsError
from .shardread import INDEX_FILE, iter_samples, read_index, sample_meta
from . import textenc

STEP = rule.FIELD  # index.json key and per-shard flag
PARAMS = ("horizon", "history", "frame_stride", "vl_k", "action_k", "resample", "centre", "seed")
FEATURES = {"vl": "atomic caption + history caption embeddings, centred per episode",
            "action": "actions and states of the history steps then the chunk, resampled"}


@dataclass
class EpisodeWindows:
    key: str
    shard: str
    windows: list[rule.Window]


def _majority(ids: np.ndarray) -> int:
    """The most frequent id (ties: the smaller)."""
    c = Counter(ids.tolist())
    return min(c, key=lambda i: (-c[i], i))


def read_windows(folder: Path, horizon: int, history: int, frame_stride: int, progress: bool
                 ) -> tuple[list[EpisodeWindows], list[EventItem], list[str]]:
    """Every window of every episode: (episodes in shard order, one item per window with its
    atomic caption and history-conditioned trajectory, the history captions)."""
    episodes, items, history_captions = [], [], []
    total = read_index(folder).get("total_samples")
    read = iter_samples(folder, ("json", "actions.npy", "states.npy"))
    for n, (shard, key, members) in enumerate(tqdm(read, total=total, unit="episode", desc="read episodes",
                                                   disable=not progress)):
        where = f"{folder / shard}: sample {key}"
        meta = sample_meta(members, where)
        why = "cluster-windows reads each episode's trajectory"
        actions = member_array(members, "actions.npy", where, np.float32, 2, why)
        states = member_array(members, "states.npy", where, np.float32, 2, why)
        if len(states) != len(actions):
            raise DataToolsError(f"{where}: actions.npy has {len(actions)} steps, states.npy {len(states)}")
        events = meta.get("events")
        problem = rule.events_problem(events, len(actions))
        if problem is not None:
            raise DataToolsError(f"{where}.json {problem}" if problem.startswith("has no") else
                                 f"{where}.json: {problem}")
        event_of_step = np.repeat(np.arange(len(events)), [ev["end"] - ev["start"] for ev in events])
        wins = rule.episode_windows(key, events, len(actions), horizon, history, frame_stride)
        episodes.append(EpisodeWindows(key, shard, wins))
        for w in wins:
            steps = np.concatenate([w.history, np.arange(w.anchor, w.stop)])
            items.append(EventItem(n, str(meta.get("level", "")), w.index, events[w.atomic]["caption"],
                                   np.concatenate([actions[steps], states[steps]], axis=1)))
            before = _majority(event_of_step[w.history]) if len(w.history) else w.atomic
            history_captions.append(events[before]["caption"])
    if not episodes:
        raise DataToolsError(f"{folder}: the shards hold no samples")
    return episodes, items, history_captions


def cluster_items(items: list[EventItem], history_captions: list[str], vl_k: int, action_k: int,
                  resample: int, centre: str, seed: int, encode) -> tuple[np.ndarray, np.ndarray]:
    """(vl labels, action labels), one per window, with ``clustering``'s functions."""
    now = centred_embeddings(items, encode([it.caption for it in items]), centre)
    before = centred_embeddings(items, encode(history_captions), centre)
    vl = kmeans_labels(np.concatenate([now, before], axis=1), vl_k, seed)
    act = kmeans_labels(action_features(items, resample), action_k, seed)
    return vl, act


@dataclass(frozen=True)
class WriteWindows:
    """The ``compute`` of ``augment_shards``: each sample's json with its ``windows`` record
    (picklable: worker processes)."""
    records: dict  # episode key -> the json's "windows" value

    def __call__(self, samples, shard: Path) -> list[dict[str, bytes]]:
        out = []
        for key, members in samples:
            if key not in self.records:
                raise DataToolsError(f"{shard}: sample {key} was not there when the windows were read "
                                     "(was the folder changed meanwhile?)")
            meta = sample_meta(members, f"{shard}: sample {key}")
            meta[STEP] = self.records[key]
            out.append({"json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")})
        return out


def _check_flags(folder: Path, index: dict, params: dict, force: bool) -> None:
    old = index.get(STEP) or {}
    flagged = [s["name"] for s in index.get("shards", []) if s.get(STEP)]
    if flagged and not force and any(old.get(k) != params[k] for k in PARAMS):
        raise DataToolsError(
            f"{folder / INDEX_FILE}: {len(flagged)} shard(s) already carry window clusters for "
            f"{rule.describe(old)} (vl_k {old.get('vl_k')}, action_k {old.get('action_k')}, resample "
            f"{old.get('resample')}, centre {old.get('centre')}, seed {old.get('seed')}); pass --force to "
            f"re-cluster them for {rule.describe(params)}")


def _up_to_date(folder: Path, index: dict, params: dict) -> dict | None:
    """The result of a finished run with the same flags whose shards are untouched since (their
    sizes as index.json records them), or None. Saves loading the caption encoder on a re-run."""
    spec = index.get(STEP) or {}
    if not spec.get("complete") or any(spec.get(k) != params[k] for k in PARAMS):
        return None
    shards = index.get("shards") or []
    if not all(s.get(STEP) and (folder / s["name"]).is_file()
               and (folder / s["name"]).stat().st_size == s.get("bytes") for s in shards):
        return None
    summary = lambda axis: {c: {"count": n, "examples": []}  # noqa: E731
                            for c, n in (index.get(f"window_{axis}_cluster_counts") or {}).items()}
    return {"spec": spec, "shards": len(shards), "done": 0, "skipped": len(shards),
            "vl": summary("vl"), "action": summary("action")}


def cluster_windows(folder: Path, horizon: int, history: int, frame_stride: int = 4, vl_k: int = 8,
                    action_k: int = 8, resample: int = 16, centre: str = "episode", seed: int = 0,
                    workers: int = 1, progress: bool = True, force: bool = False, examples: int = 3,
                    encode=None) -> dict:
    """Cluster the windows of the episode shards in ``folder`` and write the ids (module doc).

    Returns ``{"spec": index.json["windows"], "vl"/"action": per-cluster summaries, "shards",
    "done", "skipped"}``. ``encode`` replaces the caption encoder (default: offline MiniLM).
    """
    folder = Path(folder)
    if horizon < 1 or frame_stride < 1 or history < 0:
        raise DataToolsError(f"--horizon ({horizon}) and --frame-stride ({frame_stride}) must be >= 1 "
                             f"and --history ({history}) >= 0")
    if horizon % frame_stride:
        raise DataToolsError(f"--horizon {horizon} is not a multiple of --frame-stride {frame_stride}: "
                             "unified windows start on latent frames (data.chunk_horizon, model.frame_stride)")
    if vl_k < 1 or action_k < 1 or workers < 1:
        raise DataToolsError(f"--vl-k ({vl_k}), --action-k ({action_k}) and --workers ({workers}) must be positive")
    index = open_source(folder, "cluster-windows", kind="episode")
    params = {**rule.spec_of(horizon, history, frame_stride), "vl_k": vl_k, "action_k": action_k,
              "resample": resample, "centre": centre, "seed": seed}
    _check_flags(folder, index, params, force)
    if not force and (done := _up_to_date(folder, index, params)) is not None:
        return done

    episodes, items, history_captions = read_windows(folder, horizon, history, frame_stride, progress)
    vl, act = cluster_items(items, history_captions, vl_k, action_k, resample, centre, seed,
                            encode or textenc.encode)
    records, ids, at = {}, {}, 0
    for ep in episodes:
        n = len(ep.windows)
        records[ep.key] = {**rule.spec_of(horizon, history, frame_stride),
                           "vl": [int(v) for v in vl[at:at + n]], "action": [int(a) for a in act[at:at + n]]}
        ids.setdefault(ep.shard, []).extend(zip(vl[at:at + n].tolist(), act[at:at + n].tolist()))
        at += n
    fingerprint = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
    spec = {**params, "windows": len(items), "episodes": len(episodes), "features": FEATURES,
            "text_encoder": f"{textenc.MODEL_NAME} ({textenc.PACKAGE})", "fingerprint": fingerprint}

    # the counts first (the loader trusts them only once windows.complete is true)
    index["window_vl_cluster_counts"] = counts(vl)
    index["window_action_cluster_counts"] = counts(act)
    for s in index["shards"]:
        pairs = ids.get(s["name"], [])
        s["window_vl_cluster"] = counts(v for v, _ in pairs)
        s["window_action_cluster"] = counts(a for _, a in pairs)
    if force or (index.get(STEP) or {}).get("fingerprint") != fingerprint:
        for s in index["shards"]:
            s.pop(STEP, None)  # other ids than the shards hold: every shard is rewritten
        index.pop(STEP, None)
    write_index(folder, index)
    done = augment_shards(folder, STEP, spec, ("json",), WriteWindows(records), workers, progress, force,
                          identity=("fingerprint",))
    return {"spec": read_index(folder)[STEP], **done, "vl": summarise(items, vl, examples),
            "action": summarise(items, act, examples)}
