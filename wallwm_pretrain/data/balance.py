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
"""

from __future__ import annotations

import zlib
from typing import Iterable, Iterator

from wallwm_pretrain.config import BalanceConfig
from wallwm_pretrain.data.decode import decode_meta
from wallwm_pretrain.data.errors import InputError


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
    """Keeps samples with probability set by their clusters (see the module docstring)."""

    def __init__(self, index: dict, cfg: BalanceConfig, seed: int) -> None:
        self.cfg, self.seed = cfg, seed
        self.vl = _counts(index, "vl")
        self.action = _counts(index, "action")
        if not self.vl or not self.action:
            raise ValueError("index.json has no cluster counts (vl_cluster_counts / action_cluster_counts)")
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
        p = self.keep_probability(int(meta["vl_cluster"]), int(meta["action_cluster"]))
        return p >= 1.0 or _unit(self.seed, epoch, key) < p

    def stage(self, src: Iterable[dict], epoch: int) -> Iterator[dict]:
        """Pipeline stage on raw samples (before decoding: only the json member is parsed)."""
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
