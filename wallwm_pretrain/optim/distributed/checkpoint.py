"""Distributed Muon's optimizer state in the single-process layout, from every rank's share.

Each rank's :meth:`~.optimizer_set.DistributedOptimizerSet.state_dict` holds what that rank owns
(the momentum of its home matrices, its AdamW shards) plus the layout needed to rebuild whole
tensors: the ownership plan, tensor-parallel partition dims and strides, fused row layouts,
flat shard ranges, pipeline rank. :func:`merge_sharded_states` turns the shares of all ranks
into exactly the layout of a single-process ``ReplicatedOptimizerSet.state_dict()`` (whole TP=1 tensors,
parameters named by the ``split`` lists, per-group scheduler fields per AdamW group kind), the
format of the canonical checkpoints. Loading the other way is per rank and needs no merge
(``DistributedOptimizerSet.load_canonical_state_dict``).

Trade-off: the merge holds the whole optimizer state in one process; it is done once per save
on the writer, or offline from per-rank files.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Optional

from torch import Tensor

from wallwm_pretrain.optim.params import ParamSplit
from wallwm_pretrain.optim.fused import FusedRows
from wallwm_pretrain.optim.distributed.adamw import merge_adamw_state
from wallwm_pretrain.optim.distributed.plan import LogicalMatrix
from wallwm_pretrain.optim.tp_matrices import unstride

FORMAT = "wallwm-dist-muon/1"
KINDS = {"muon": ("muon",), "adamw": ("adamw_decay", "adamw_no_decay")}
# LambdaLR fields that hold one entry per param group; a pipeline rank may lack a group kind
PER_GROUP_FIELDS = ("base_lrs", "_last_lr", "lr_lambdas")


def group_kinds(key: str, split: dict) -> list[str]:
    """The group kinds optimizer ``key`` holds, in order (empty groups are not built)."""
    return [k for k in KINDS[key] if split[k]]


def scheduler_by_kind(sched: dict, kinds: list[str]) -> tuple[dict, dict]:
    common = {k: v for k, v in sched.items() if k not in PER_GROUP_FIELDS}
    return common, {f: dict(zip(kinds, sched[f])) for f in PER_GROUP_FIELDS if f in sched}


def scheduler_for(common: dict, per_kind: dict, kinds: list[str]) -> dict:
    return dict(common, **{f: [values[k] for k in kinds] for f, values in per_kind.items()})


def hyper_of(group: dict) -> dict:
    return {k: v for k, v in group.items() if k != "params"}


def load_hyper(mine: list[dict], saved: list[dict]) -> None:
    """Copy saved hyper-parameters (lr, initial_lr, ...) into this rank's param groups."""
    for g, s in zip(mine, saved):
        g.update({k: v for k, v in s.items() if k != "params"})


def matching_adamw_groups(saved_groups: list[dict], saved_split: dict, split: ParamSplit) -> list[dict]:
    """The saved AdamW groups that correspond to this rank's non-empty groups."""
    by_kind = dict(zip([k for k in ("adamw_decay", "adamw_no_decay") if saved_split[k]], saved_groups))
    return [by_kind[k] for k in ("adamw_decay", "adamw_no_decay") if getattr(split, k)]


def merge_momentum(states: list[dict]) -> tuple[list[str], dict[str, Tensor]]:
    """Whole (TP=1 layout) momentum per parameter from every rank's :meth:`DistMuon.sharded_state`.

    Args:
        states: the sharded states of all ranks of all pipeline ranks (any order).

    Returns:
        ``(names, momentum)``: parameter names in pipeline-rank order, and the whole buffers of
        those that have one.

    Raises:
        ValueError: a matrix whose owner or pieces are missing from ``states``.
    """
    by_pipeline_rank: dict[int, list[dict]] = defaultdict(list)
    for s in states:
        by_pipeline_rank[s["pp_rank"]].append(s)
    names: list[str] = []
    whole: dict[str, Tensor] = {}
    for pp in sorted(by_pipeline_rank):
        same_pp = by_pipeline_rank[pp]
        first = same_pp[0]
        names += first["names"]
        parts: dict[str, dict[int, Tensor]] = defaultdict(dict)
        for entry in first["plan"]:
            m = LogicalMatrix(**entry)
            if m.key in first.get("tp_ns_keys", ()):  # owner mode, kept in TP pieces at the home's DP index
                home_dp = next(s["dp_rank"] for s in same_pp if s["stage_rank"] == m.home)
                replica = sorted((s for s in same_pp if s["dp_rank"] == home_dp), key=lambda s: s["tp_rank"])
                if not all(m.key in s["momentum"] for s in replica):
                    continue  # no momentum yet: the step count is 0
                if len(replica) != first["tp_size"]:
                    raise ValueError(f"momentum of {m.key}: {len(replica)} of {first['tp_size']} TP pieces present")
                buf = unstride([s["momentum"][m.key] for s in replica], m.tp_dim, m.stride)
            elif first["mode"] == "owner":
                holders = [s for s in same_pp if s["stage_rank"] == m.home and m.key in s["momentum"]]
                if not holders:
                    continue  # no momentum yet: the step count is 0
                buf = holders[0]["momentum"][m.key]
            else:
                replica = sorted((s for s in same_pp if s["dp_rank"] == 0), key=lambda s: s["tp_rank"])
                if not all(m.key in s["momentum"] for s in replica):
                    continue
                pieces = [s["momentum"][m.key] for s in replica]
                if m.tp_dim is not None and len(pieces) != first["tp_size"]:
                    raise ValueError(f"momentum of {m.key}: {len(pieces)} of {first['tp_size']} TP pieces present")
                buf = unstride(pieces, m.tp_dim, m.stride) if m.tp_dim is not None else pieces[0]
            parts[m.name][m.part] = buf
        for name in first["names"]:
            got = parts.get(name)
            if not got:
                continue
            if -1 in got:
                whole[name] = got[-1]
                continue
            labels, sizes, groups = first["whole_layouts"][name]
            layout = FusedRows(tuple(labels), tuple(sizes), groups)
            if len(got) != len(labels):
                raise ValueError(f"momentum of {name}: {len(got)} of {len(labels)} parts present")
            whole[name] = layout.merge([got[j] for j in range(len(labels))])
    return names, whole


def merge_sharded_states(states: list[dict], order: Optional[list[str]] = None) -> dict[str, Any]:
    """Merge every rank's :meth:`DistributedOptimizerSet.state_dict` into single-process layout.

    Args:
        states: one state per rank, all ranks of all pipeline ranks (any order).
        order: parameter names in the single-process model's order. Without it the names of
            each group follow the pipeline ranks in rank order, which is the model's order
            unless pipeline ranks interleave (virtual pipeline); ``ReplicatedOptimizerSet.load_state_dict``
            compares names in order, :meth:`DistributedOptimizerSet.load_canonical_state_dict`
            by name.

    Returns:
        A dict laid out as ``ReplicatedOptimizerSet.state_dict()``: ``split``, ``optimizers`` (torch
        ``state_dict`` of ``muon`` and ``adamw`` with whole tensors) and ``schedulers``.
    """
    per_pp: dict[int, dict] = {}
    for s in states:
        if s.get("format") != FORMAT:
            raise ValueError(f"not a distributed Muon shard (format {s.get('format')!r})")
        per_pp.setdefault(s["pp_rank"], s)
    split = {k: [n for pp in sorted(per_pp) for n in per_pp[pp]["split"][k]] for k in ("muon", "adamw_decay", "adamw_no_decay")}
    if order is not None:
        rank = {n: i for i, n in enumerate(order)}
        split = {k: sorted(names, key=lambda n: rank.get(n, len(rank))) for k, names in split.items()}
    muon_hyper = next((st["hyper"]["muon"][0] for st in per_pp.values() if "muon" in st["hyper"]), None)
    optimizers: dict[str, Any] = {}
    if split["muon"]:
        _, momentum = merge_momentum([s["muon"] for s in states if s["muon"] is not None])
        index = {n: i for i, n in enumerate(split["muon"])}
        optimizers["muon"] = {
            "state": {index[n]: {"momentum_buffer": t} for n, t in sorted(momentum.items(), key=lambda kv: index[kv[0]])},
            "param_groups": [{**muon_hyper, "params": list(range(len(split["muon"])))}],
        }
    adam_groups = [split[k] for k in ("adamw_decay", "adamw_no_decay") if split[k]]
    if adam_groups:
        whole = merge_adamw_state([s["adamw"] for s in states if s["adamw"] is not None])
        names = [n for g in adam_groups for n in g]
        hyper = _pipeline_rank_hyper(per_pp)
        state, groups, i = {}, [], 0
        for kind, g in zip([k for k in ("adamw_decay", "adamw_no_decay") if split[k]], adam_groups):
            groups.append({**hyper[kind], "params": list(range(i, i + len(g)))})
            i += len(g)
        for idx, n in enumerate(names):
            if n in whole:
                state[idx] = whole[n]
        optimizers["adamw"] = {"state": state, "param_groups": groups}
    for kind in ("muon", "adamw"):
        if kind in optimizers:
            held = len(optimizers[kind]["state"])
            total = sum(len(g["params"]) for g in optimizers[kind]["param_groups"])
            if held not in (0, total):
                raise ValueError(f"{kind} state rebuilt for {held} of {total} parameters: ranks missing")
    schedulers = {}
    for key in KINDS:
        if not group_kinds(key, split):
            continue
        common, per_kind = None, {}
        for st in per_pp.values():
            kinds = group_kinds(key, st["split"])
            if not kinds:
                continue
            c, p = scheduler_by_kind(st["schedulers"][key], kinds)
            common = common or c
            for field, values in p.items():
                per_kind.setdefault(field, {}).update(values)
        schedulers[key] = scheduler_for(common, per_kind, group_kinds(key, split))
    return {"split": split, "optimizers": optimizers, "schedulers": schedulers}


def _pipeline_rank_hyper(per_pp: dict[int, dict]) -> dict[str, dict]:
    """AdamW hyper-parameters per group kind, from any pipeline rank that has that group."""
    out: dict[str, dict] = {}
    for s in per_pp.values():
        kinds = [k for k in ("adamw_decay", "adamw_no_decay") if s["split"][k]]
        for kind, h in zip(kinds, s["hyper"].get("adamw", [])):
            out.setdefault(kind, h)
    return out
