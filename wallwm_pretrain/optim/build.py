"""Split a model's parameters between Muon and AdamW and drive both as one optimizer.

Rule: Muon takes every trainable parameter with ``ndim == 2`` that the model did not mark
``param.use_adamw = True``; AdamW takes the rest (embeddings and output heads, which the model
marks, plus norms, biases and other 1-D tensors). Embeddings and heads are 2-D but are not
hidden linear maps: their rows are looked up (or read out) one by one, so orthogonalising the
whole matrix would couple unrelated tokens. AdamW decays only its >= 2-D tensors; decaying
norm gains and biases pulls them towards 0, which is never the intended prior.

Both optimizers follow the same warmup + cosine schedule (see :mod:`.schedule`) from their own
peak lr. Trade-off: the split is decided once, by parameter name order, so a checkpoint can only
be loaded into a model with the same trainable parameters (checked on load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig
from .fused import FusedRows
from .muon import LocalMatrices, Muon
from .newton_schulz import ns_variant as resolve_ns_variant
from .schedule import build_scheduler


def resolve_auto_ns_dtype(ns_dtype: str, device_type: str) -> str:
    """``auto`` -> ``bfloat16`` on CUDA (fast tensor cores), ``float32`` elsewhere.

    Args:
        ns_dtype: ``auto``, ``float32`` or ``bfloat16``.
        device_type: ``cuda``, ``cpu``, ...

    Returns:
        ``float32`` or ``bfloat16``.

    Raises:
        ValueError: any other ``ns_dtype``.
    """
    if ns_dtype == "auto":
        return "bfloat16" if device_type == "cuda" else "float32"
    if ns_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"ns_dtype must be auto, float32 or bfloat16, got {ns_dtype!r}")
    return ns_dtype


def uses_muon(param: torch.Tensor) -> bool:
    """Whether ``param`` belongs to the Muon group (2-D and not marked ``use_adamw``)."""
    return param.ndim == 2 and not getattr(param, "use_adamw", False)


@dataclass
class ParamSplit:
    """Trainable parameter names per optimizer, in ``model.named_parameters()`` order."""

    muon: list[str]
    adamw_decay: list[str]
    adamw_no_decay: list[str]

    def summary(self, params: dict[str, torch.Tensor]) -> dict[str, dict[str, int]]:
        """``{"tensors": ..., "params": ...}`` per optimizer and AdamW group (``muon``, ``adamw``,
        ``adamw_decay``, ``adamw_no_decay``), counting the elements of ``params`` by name."""

        def count(names: list[str]) -> dict[str, int]:
            return {"tensors": len(names), "params": sum(params[n].numel() for n in names)}

        return {
            "muon": count(self.muon),
            "adamw": count(self.adamw_decay + self.adamw_no_decay),
            "adamw_decay": count(self.adamw_decay),
            "adamw_no_decay": count(self.adamw_no_decay),
        }


def split_parameters(model: nn.Module) -> ParamSplit:
    """Assign each trainable parameter of ``model`` to Muon, AdamW with decay or AdamW without.

    Args:
        model: the module; parameters with ``requires_grad=False`` are left out.

    Returns:
        The names in each group.
    """
    split = ParamSplit([], [], [])
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if uses_muon(p):
            split.muon.append(name)
        elif p.ndim >= 2:
            split.adamw_decay.append(name)
        else:
            split.adamw_no_decay.append(name)
    return split


def muon_hyperparameters(cfg: OptimConfig, ns_dtype: str, ns_variant: str) -> dict[str, Any]:
    """Muon's keyword arguments from the ``optim`` config (shared by every Muon flavour).

    Args:
        cfg: the ``optim`` section of the run config.
        ns_dtype: ``float32`` or ``bfloat16`` (``auto`` already resolved).
        ns_variant: ``quintic`` or ``polar_express``.
    """
    coefficients, norm_scale = resolve_ns_variant(ns_variant)
    return dict(
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        ns_steps=cfg.ns_steps,
        ns_dtype=ns_dtype,
        ns_coefficients=coefficients,
        ns_norm_scale=norm_scale,
    )


class OptimizerSet:
    """Muon + AdamW with their schedulers, used like a single optimizer.

    ``step()`` steps both optimizers and then both schedulers, so ``lrs()`` afterwards shows the
    learning rates of the next step.

    Args:
        named_params: trainable parameters by name.
        split: which names go to Muon and to the two AdamW groups.
        cfg: the ``optim`` section of the run config.
        total_steps: optimizer steps of the whole run.
        ns_dtype: ``float32`` or ``bfloat16``.
        matrices: Muon's hook to the whole matrix of a sliced parameter.
        fused: row layouts of fused Muon weights by name (QKV, gate/up, KV), orthogonalised
            per logical matrix; ``None`` treats every weight as one matrix.
        ns_variant: ``quintic`` or ``polar_express`` (see ``newton_schulz.ns_variant``).
    """

    def __init__(
        self,
        named_params: dict[str, nn.Parameter],
        split: ParamSplit,
        cfg: OptimConfig,
        total_steps: int,
        ns_dtype: str,
        matrices: LocalMatrices | None = None,
        fused: dict[str, FusedRows] | None = None,
        ns_variant: str = "quintic",
    ) -> None:
        self.split = split
        self._params = named_params
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        layouts = {named_params[n]: layout for n, layout in (fused or {}).items() if n in split.muon}
        if split.muon:
            self.optimizers["muon"] = Muon(
                [named_params[n] for n in split.muon],
                **muon_hyperparameters(cfg, ns_dtype, ns_variant),
                matrices=matrices,
                fused=layouts,
            )
        adamw_groups = [
            {"params": [named_params[n] for n in names], "weight_decay": wd}
            for names, wd in ((split.adamw_decay, cfg.weight_decay), (split.adamw_no_decay, 0.0))
            if names
        ]
        if adamw_groups:
            self.optimizers["adamw"] = torch.optim.AdamW(
                adamw_groups,
                lr=cfg.adamw_lr,
                betas=(float(cfg.adamw_betas[0]), float(cfg.adamw_betas[1])),
                eps=cfg.adamw_eps,
            )
        self.schedulers = {
            key: build_scheduler(opt, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
            for key, opt in self.optimizers.items()
        }

    def step(self) -> None:
        """One update of every parameter with a gradient, then advance the schedules."""
        for opt in self.optimizers.values():
            opt.step()
        for sched in self.schedulers.values():
            sched.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear all gradients.

        Args:
            set_to_none: drop the gradient tensors (saves memory) instead of zeroing them.
        """
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def clip_grad_norm(self, max_norm: float) -> float:
        """Scale all gradients so their global L2 norm is at most ``max_norm``.

        The norm is over the gradients of both optimizers together (this process only; a
        data/tensor-parallel caller must reduce it across ranks itself).

        Args:
            max_norm: the bound; 0 disables clipping (the norm is still measured).

        Returns:
            The global norm before clipping.

        Raises:
            ValueError: a negative ``max_norm``.
        """
        if max_norm < 0:
            raise ValueError(f"max_norm must be >= 0 (0 disables clipping), got {max_norm}")
        grads = [p.grad for p in self._params.values() if p.grad is not None]
        if not grads:
            return 0.0
        # Per-tensor norms in fp32 first: a bf16 sum of squares over millions of elements
        # would lose most of its digits.
        norms = torch.stack([torch.linalg.vector_norm(g, dtype=torch.float32) for g in grads])
        total = torch.linalg.vector_norm(norms)
        if max_norm > 0:
            coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(coef.to(g.dtype))
        return float(total)

    def lrs(self) -> dict[str, float]:
        """Current (scheduled) learning rate per optimizer, e.g. ``{"muon": ..., "adamw": ...}``.

        For Muon this is the lr before the per-shape 0.2 sqrt(max(A, B)) factor.
        """
        return {key: float(opt.param_groups[0]["lr"]) for key, opt in self.optimizers.items()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume: both optimizers, both schedulers and the name split."""
        return {
            "split": {
                "muon": list(self.split.muon),
                "adamw_decay": list(self.split.adamw_decay),
                "adamw_no_decay": list(self.split.adamw_no_decay),
            },
            "optimizers": {key: opt.state_dict() for key, opt in self.optimizers.items()},
            "schedulers": {key: sched.state_dict() for key, sched in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`.

        Args:
            state: a dict returned by :meth:`state_dict` of a set built on the same parameters.

        Raises:
            ValueError: the saved split names different parameters than this set holds.
        """
        saved = state["split"]
        for group in ("muon", "adamw_decay", "adamw_no_decay"):
            mine = getattr(self.split, group)
            if list(saved[group]) != mine:
                missing = sorted(set(saved[group]) ^ set(mine))[:5]
                raise ValueError(
                    f"optimizer state does not match the model: group {group!r} holds "
                    f"{len(saved[group])} saved vs {len(mine)} current parameters "
                    f"(differing names, first 5: {missing or 'same names, other order'})"
                )
        for key, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][key])
        for key, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][key])

    def param_groups_summary(self) -> dict[str, dict[str, int]]:
        """Tensor and element counts per optimizer and per AdamW decay group, for logging.

        Keys: ``muon``, ``adamw`` (both AdamW groups), ``adamw_decay``, ``adamw_no_decay``; each
        maps to ``{"tensors": ..., "params": ...}``.
        """
        return self.split.summary(self._params)


def build_optimizer(
    model: nn.Module,
    cfg: OptimConfig,
    total_steps: int,
    device_type: str,
    fused: dict[str, FusedRows] | None = None,
    ns_variant: str = "quintic",
) -> OptimizerSet:
    """Build the Muon + AdamW optimizer set of ``model``.

    Args:
        model: the module to train; marks on parameters (``use_adamw``) steer the split.
        cfg: the ``optim`` section of the run config.
        total_steps: optimizer steps of the whole run (end of the cosine decay).
        device_type: ``cuda`` or ``cpu``; picks the Newton-Schulz dtype when ``ns_dtype=auto``.
        fused: row layouts of fused weights by name (e.g. from
            ``wallwm_pretrain.parallel.muon_layout.fused_layouts(model)``); ``None`` keeps every
            weight one matrix.
        ns_variant: ``quintic`` or ``polar_express``.

    Returns:
        An :class:`OptimizerSet`.

    Raises:
        ValueError: no trainable parameters, or a bad ``ns_dtype`` / schedule value.
    """
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not named:
        raise ValueError("build_optimizer: the model has no trainable parameters")
    ns_dtype = resolve_auto_ns_dtype(cfg.ns_dtype, device_type)
    return OptimizerSet(
        named, split_parameters(model), cfg, total_steps, ns_dtype, fused=fused, ns_variant=ns_variant
    )
