"""Optimizers: Muon (Newton-Schulz) for hidden matrices, AdamW for the rest, warmup + cosine.

``build_optimizer`` is the entry point; :mod:`.distributed` holds distributed Muon. Process
groups flow in as :class:`OptimizerGroups`; nothing in ``optim/`` creates one.
"""

from .build import build_optimizer
from .fused import FusedRows
from .groups import OptimizerGroups
from .muon import LocalMatrices, Muon, adamw_rms_scale, apply_update, momentum_update
from .newton_schulz import (
    DEFAULT_EPS,
    DEFAULT_NS_STEPS,
    NS_COEFFICIENTS,
    NS_VARIANTS,
    POLAR_EXPRESS_COEFFICIENTS,
    newton_schulz,
    gram_newton_schulz_flops,
    newton_schulz_flops,
    ns_uses_gram,
    ns_variant,
    resolve_ns_dtype,
)
from .params import ParamSplit, resolve_auto_ns_dtype, split_parameters, uses_muon
from .schedule import build_scheduler, lr_factor
from .sets import OptimizerSet, OptimizerSetBase, ReplicatedOptimizerSet

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_NS_STEPS",
    "FusedRows",
    "LocalMatrices",
    "Muon",
    "NS_COEFFICIENTS",
    "NS_VARIANTS",
    "OptimizerGroups",
    "OptimizerSet",
    "OptimizerSetBase",
    "POLAR_EXPRESS_COEFFICIENTS",
    "ParamSplit",
    "ReplicatedOptimizerSet",
    "adamw_rms_scale",
    "apply_update",
    "momentum_update",
    "ns_variant",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "newton_schulz",
    "newton_schulz_flops",
    "gram_newton_schulz_flops",
    "ns_uses_gram",
    "resolve_auto_ns_dtype",
    "resolve_ns_dtype",
    "split_parameters",
    "uses_muon",
]
