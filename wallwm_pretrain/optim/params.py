"""Which parameters Muon and AdamW take, and with which hyper-parameters.

Rule: Muon takes every trainable parameter with ``ndim == 2`` that the model did not mark
``param.use_adamw = True``; AdamW takes the rest (embeddings and output heads, which the model
marks, plus norms, biases and other 1-D tensors). AdamW tensors the model marks
``param.no_weight_decay = True`` (modulation tables, per-view camera vectors: offsets whose prior
is not zero) are never decayed, whatever their shape. Embeddings and heads are 2-D but are not
hidden linear maps: their rows are looked up (or read out) one by one, so orthogonalising the
whole matrix would couple unrelated tokens. AdamW decays only its >= 2-D tensors; decaying
norm gains and biases pulls them towards 0, which is never the intended prior.

Both optimizers follow the same warmup + cosine schedule (see :mod:`.schedule`) from their own
peak lr (the optimizer sets in :mod:`.sets` drive them together). Trade-off: the split is decided once, by parameter name order, so a checkpoint can only
be loaded into a model with the same trainable parameters (checked on load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import OptimConfig
from .newton_schulz import ns_uses_gram, ns_variant as resolve_ns_variant


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
        elif p.ndim >= 2 and not getattr(p, "no_weight_decay", False):
            split.adamw_decay.append(name)
        else:
            split.adamw_no_decay.append(name)
    return split


def muon_hyperparameters(cfg: OptimConfig, ns_dtype: str, ns_variant: str) -> dict[str, Any]:
    """Muon's keyword arguments from the ``optim`` config (shared by every Muon flavour).

    Args:
        cfg: the ``optim`` section of the run config.
        ns_dtype: ``float32`` or ``bfloat16`` (``auto`` already resolved).
        ns_variant: ``quintic``, ``polar_express`` or ``gram``.
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
        ns_gram=ns_uses_gram(ns_variant),
    )
