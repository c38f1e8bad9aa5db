"""Cluster-balanced mixing by deterministic thinning of the sample stream.

Each sample carries a vision-language cluster v and an action cluster a (written by
``data_tools cluster``). With n_v and n_a the cluster sizes from ``index.json``, a sample is
kept with probability

    keep(v, a) = n_v^(alpha_vl - 1) * n_a^(alpha_action - 1) / max_v(.) * max_a(.)

so the kept stream follows p(v, a) ~ n_(v,a) n_v^(alpha_vl - 1) n_a^(alpha_action - 1).
The keep decision is a hash of (seed, epoch, sample key): it does not depend on which rank
or worker reads the sample, never duplicates a sample within an epoch, changes from epoch to
epoch, and needs no saved state (a resumed loader replays the same decisions).

Trade-off: balance comes from *dropping* samples of large clusters in each pass rather than
repeating samples of small ones, so an epoch is shorter than the dataset
(:meth:`ClusterBalance.expected_fraction`); over epochs every sample is seen.

**Per window (unified mode).** An episode sample holds many windows; its episode-level clusters
(the most common of its events') are coarse, and keeping or dropping whole episodes thins the
stream badly. When ``python -m data_tools cluster-windows`` clustered the episode shards' windows
(``index.json["windows"]``, counts ``window_vl_cluster_counts`` / ``window_action_cluster_counts``)
for the run's ``data.chunk_horizon``, ``data.history_latents`` and ``model.frame_stride``, the
same rule runs on the *cooked* windows instead (:meth:`ClusterBalance.window_filter`), with the
window counts and the window key (``<episode key>/w<anchor>``) in the hash. Shards clustered for
other windows fail at start naming both (:func:`balance_for`); shards without window clusters
keep the per-episode balance.
"""

from __future__ import annotations

import logging
import zlib
from typing import Iterable, Iterator

from wallwm_pretrain.config import BalanceConfig, ConfigError, DataConfig
from wallwm_pretrain.data.cookers import TrainSample
from wallwm_pretrain.data.decode import decode_meta
from wallwm_pretrain.data.errors import InputError, ShardError
from wallwm_pretrain.windows import FIELD, SPEC_KEYS, describe, spec_of

log = logging.getLogger(__name__)
UNITS = {"sample": "", "window": "window_"}  # what is balanced -> prefix of its index.json counts


def _counts(index: dict, axis: str) -> dict[int, int]:
    counts = index.get(f"{axis}_cluster_counts")
    if counts is None:  # older indexes: sum the per-shard counts
        counts = {}
        for shard in index.get("shards", []):
            for c, n in shard.get(f"{axis}_cluster", {}).items():
                counts[c] = counts.get(c, 0) + n
    return {int(c): int(n) for c, n in counts.items() if int(n) > 0}


def _unit(seed: int, epoch: int, key: str) -> float:
    """A uniform number in [0, 1) from (seed, epoch, key), identical in every process."""
    h = zlib.crc32(f"{seed}:{epoch}:{key}".encode())
    h = zlib.crc32(key.encode(), h)  # second round: keys differing only at the end spread well
    return h / 2**32


class ClusterBalance:
    """Keeps samples (``unit="sample"``, raw samples before cooking) or unified-mode windows
    (``unit="window"``, after cooking) with probability set by their clusters (see the module
    docstring)."""

    def __init__(self, index: dict, cfg: BalanceConfig, seed: int, unit: str = "sample") -> None:
        self.cfg, self.seed, self.unit = cfg, seed, unit
        prefix = UNITS[unit]
        self.vl = _counts(index, f"{prefix}vl")
        self.action = _counts(index, f"{prefix}action")
        if not self.vl or not self.action:
            raise ValueError(f"index.json has no cluster counts ({prefix}vl_cluster_counts / "
                             f"{prefix}action_cluster_counts)")
        self._w_vl = {c: n ** (cfg.alpha_vl - 1.0) for c, n in self.vl.items()}
        self._w_action = {c: n ** (cfg.alpha_action - 1.0) for c, n in self.action.items()}
        self._norm = max(self._w_vl.values()) * max(self._w_action.values())

    def keep_probability(self, vl: int, action: int) -> float:
        try:
            return self._w_vl[vl] * self._w_action[action] / self._norm
        except KeyError as exc:
            raise ValueError(f"cluster {exc.args[0]} is not in index.json's cluster counts") from None

    def target(self, joint: dict[tuple[int, int], int]) -> dict[tuple[int, int], float]:
        """The target mix over (v, a) for joint counts n_(v,a)."""
        mass = {va: n * self.keep_probability(*va) for va, n in joint.items()}
        total = sum(mass.values())
        return {va: m / total for va, m in mass.items()}

    def expected_fraction(self, joint: dict[tuple[int, int], int]) -> float:
        """Expected share of the dataset kept per epoch."""
        total = sum(joint.values())
        return sum(n * self.keep_probability(*va) for va, n in joint.items()) / total

    def keep(self, meta: dict, key: str, epoch: int) -> bool:
        return self.keep_ids(int(meta["vl_cluster"]), int(meta["action_cluster"]), key, epoch)

    def keep_ids(self, vl: int, action: int, key: str, epoch: int) -> bool:
        """The keep rule for clusters (vl, action) and a sample or window key."""
        p = self.keep_probability(vl, action)
        return p >= 1.0 or _unit(self.seed, epoch, key) < p

    def sample_filter(self, src: Iterable[dict], epoch: int) -> Iterator[dict]:
        """The loader's filter on raw samples (before decoding: only the json member is parsed)."""
        for sample in src:
            try:
                meta = decode_meta(sample)
                keep = meta is None or self.keep(meta, sample["__key__"], epoch)
            except InputError:
                yield sample  # the cooker reports a missing or unreadable json, naming the shard
                continue
            except (KeyError, ValueError, TypeError) as exc:
                # kept and marked: the cooker reports it, inside data.max_bad_samples
                yield {**sample, "__balance_error__": f"no usable cluster ids ({type(exc).__name__}: {exc})"}
                continue
            if keep:
                yield sample

    def window_filter(self, src: Iterable, epoch: int) -> Iterator:
        """The loader's filter on cooked windows (``unit="window"``): a window is kept by its own
        clusters (``TrainSample.clusters``) and key; anything else passes through."""
        for item in src:
            if isinstance(item, TrainSample) and item.clusters is not None:
                if not self.keep_ids(item.clusters[0], item.clusters[1], item.key, epoch):
                    continue
            yield item


def window_spec(index: dict, folder) -> dict | None:
    """``index.json["windows"]`` (what ``cluster-windows`` recorded), checked; None when absent."""
    spec = index.get(FIELD)
    if spec is None:
        return None
    where = f"{folder}/index.json: '{FIELD}'"
    if not isinstance(spec, dict) or not all(
        isinstance(spec.get(k), int) and not isinstance(spec.get(k), bool) for k in SPEC_KEYS
    ):
        raise ShardError(f"{where} must be an object with integer {', '.join(SPEC_KEYS)}, got {spec!r:.120}")
    return spec


def balance_for(index: dict, cfg: DataConfig, frame_stride: int,
                *, per_window: bool) -> tuple[ClusterBalance | None, dict | None]:
    """(the balance the loader applies, the window spec when it balances per window).

    None when ``data.balance`` is the natural mix. With ``per_window`` (the data mode balances
    windows: unified mode, ``modes/unified.py``) over shards whose windows were clustered: per
    window, after ConfigError checks that they were clustered for this run's windows and that
    the clustering finished. Otherwise per raw sample, as before.
    """
    if not cfg.balance.active:
        return None, None
    spec = window_spec(index, cfg.shards) if per_window else None
    if spec is None:
        if per_window:
            log.warning("%s: the episode windows carry no cluster ids: data.balance keeps or drops whole "
                        "episodes by their events' most common clusters (coarse); python -m data_tools "
                        "cluster-windows --shards %s --horizon %d --history %d --frame-stride %d balances per "
                        "window", cfg.shards, cfg.shards, cfg.chunk_horizon, cfg.history_latents, frame_stride)
        return ClusterBalance(index, cfg.balance, cfg.seed), None
    want = spec_of(cfg.chunk_horizon, cfg.history_latents, frame_stride)
    got = {k: spec[k] for k in SPEC_KEYS}
    if got != want:
        raise ConfigError(
            f"{cfg.shards}: the episode windows were clustered for {describe(got)}; this run cuts windows "
            f"of {describe(want)} (data.chunk_horizon, data.history_latents, model.frame_stride). Run "
            f"python -m data_tools cluster-windows --shards {cfg.shards} --horizon {want['horizon']} "
            f"--history {want['history']} --frame-stride {want['frame_stride']} --force, or set "
            "data.balance.alpha_vl=1 data.balance.alpha_action=1 (natural mix)")
    if not spec.get("complete"):
        raise ConfigError(f"{cfg.shards}/index.json: the window clustering did not finish "
                          f"(windows.complete is not true); run python -m data_tools cluster-windows again")
    try:
        return ClusterBalance(index, cfg.balance, cfg.seed, unit="window"), want
    except ValueError as exc:
        raise ShardError(f"{cfg.shards}/index.json records window clusters but {exc}") from None
