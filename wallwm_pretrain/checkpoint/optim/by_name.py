"""Optimizer state keyed by parameter name: the common ground of every layout.

A rank's Muon and AdamW number their parameters 0..n-1 over what that rank holds; a
checkpoint numbers them over the whole model; an AdamW group (with decay / without) may be
empty on one pipeline rank and not on another. Names are what stays fixed, so converting
between layouts goes through the by-name form of :func:`by_name`: hyper-parameters per group
kind, per-parameter state per optimizer, scheduler fields per group kind. The by-name form
without its tensors (``split``, ``hparams``, ``schedulers``) is the *structure* a sharded
checkpoint's index holds; the tensors are pieces (:mod:`.names`).

Trade-off: one extra pass over the state dict on every save and load, negligible next to the
tensors it holds.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from wallwm_pretrain.optim.sets import GROUPS

# which optimizer holds each kind of group, in the order the optimizer sets build their groups
KINDS = {"muon": ("muon",), "adamw": ("adamw_decay", "adamw_no_decay")}
# LambdaLR fields that hold one entry per param group; a pipeline rank may lack a group kind
PER_GROUP_SCHEDULER_FIELDS = ("base_lrs", "_last_lr", "lr_lambdas")


def group_kinds(key: str, split: dict[str, list[str]]) -> list[str]:
    """The group kinds optimizer ``key`` holds, in order (empty groups are not built)."""
    return [kind for kind in KINDS[key] if split[kind]]


def scheduler_by_kind(sched: dict, kinds: list[str]) -> tuple[dict, dict]:
    """``(common fields, {per-group field: {kind: value}})`` of a scheduler's state dict."""
    common = {k: v for k, v in sched.items() if k not in PER_GROUP_SCHEDULER_FIELDS}
    return common, {f: dict(zip(kinds, sched[f])) for f in PER_GROUP_SCHEDULER_FIELDS if f in sched}


def scheduler_for(common: dict, per_kind: dict, kinds: list[str]) -> dict:
    """The scheduler state dict of a set whose groups are ``kinds`` (the inverse of :func:`scheduler_by_kind`)."""
    return dict(common, **{f: [values[k] for k in kinds] for f, values in per_kind.items()})


def by_name(optim_state: dict) -> dict:
    """A single-process optimizer-set state dict keyed by parameter name and group kind.

    Returns:
        ``{"split", "hparams": {kind: group hyper-parameters}, "state": {optimizer: {name: state}},
        "schedulers": {optimizer: {"common": ..., "per_group": {field: {kind: value}}}}}``.
    """
    split = {g: list(optim_state["split"][g]) for g in GROUPS}
    hparams, state, schedulers = {}, {}, {}
    for key, opt in optim_state["optimizers"].items():
        kinds = group_kinds(key, split)
        names = [n for kind in kinds for n in split[kind]]
        order = [i for g in opt["param_groups"] for i in g["params"]]
        index_name = {idx: names[pos] for pos, idx in enumerate(order)}
        for kind, group in zip(kinds, opt["param_groups"]):
            hparams[kind] = {k: v for k, v in group.items() if k != "params"}
        state[key] = {index_name[idx]: s for idx, s in opt["state"].items()}
        common, per_group = scheduler_by_kind(optim_state["schedulers"][key], kinds)
        schedulers[key] = {"common": common, "per_group": per_group}
    return {"split": split, "hparams": hparams, "state": state, "schedulers": schedulers}


def from_by_name(named: dict, split: dict[str, list[str]]) -> dict:
    """The state dict of an optimizer set that holds ``split`` (names in its order)."""
    optimizers, schedulers = {}, {}
    for key in KINDS:
        kinds = group_kinds(key, split)
        if not kinds:
            continue
        state, groups, start = {}, [], 0
        saved = named["state"].get(key, {})
        for kind in kinds:
            idx = list(range(start, start + len(split[kind])))
            start += len(idx)
            groups.append(dict(named["hparams"][kind], params=idx))
            state.update({i: saved[n] for i, n in zip(idx, split[kind]) if n in saved})
        optimizers[key] = {"state": state, "param_groups": groups}
        sched = named["schedulers"][key]
        schedulers[key] = scheduler_for(sched["common"], sched["per_group"], kinds)
    return {"split": {g: list(split[g]) for g in GROUPS}, "optimizers": optimizers, "schedulers": schedulers}


def merge_by_name(parts: list[dict], order: list[str]) -> dict:
    """One by-name state from the pipeline ranks' by-name states; names sorted by ``order``
    (names ``order`` lacks go last, in the order the parts list them)."""
    position = {n: i for i, n in enumerate(order)}
    listed = [n for p in parts for g in GROUPS for n in p["split"][g]]
    position.update({n: len(order) + i for i, n in enumerate(listed) if n not in position})
    # ranks of one pipeline rank report the same names: each name once
    split = {g: sorted({n for p in parts for n in p["split"][g]}, key=position.__getitem__) for g in GROUPS}
    merged: dict[str, Any] = {"split": split, "hparams": {}, "state": {}, "schedulers": {}}
    for part in parts:
        for kind, h in part["hparams"].items():
            merged["hparams"].setdefault(kind, h)
        for key, s in part["state"].items():
            merged["state"].setdefault(key, {}).update(s)
        for key, sched in part["schedulers"].items():
            mine = merged["schedulers"].setdefault(key, {"common": sched["common"], "per_group": {}})
            for field, values in sched["per_group"].items():
                for kind, v in values.items():
                    mine["per_group"].setdefault(field, {}).setdefault(kind, v)
    return merged


def to_cpu(tree):
    """``tree`` with every tensor detached and on the CPU (for gathering objects)."""
    if isinstance(tree, Tensor):
        return tree.detach().cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_cpu(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(to_cpu(v) for v in tree)
    return tree
