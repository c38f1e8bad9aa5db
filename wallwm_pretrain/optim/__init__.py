"""Optimizers: Muon (Newton-Schulz) for hidden matrices, AdamW for the rest, warmup + cosine."""

from .build import (
    OptimizerSet,
    ParamSplit,
    build_optimizer,
    resolve_auto_ns_dtype,
    split_parameters,
    uses_muon,
)
from .muon import LocalMatrices, Muon, adamw_rms_scale
from .newton_schulz import (
    DEFAULT_EPS,
    DEFAULT_NS_STEPS,
    NS_COEFFICIENTS,
    newton_schulz,
    newton_schulz_flops,
    resolve_ns_dtype,
)
from .schedule import build_scheduler, lr_factor

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_NS_STEPS",
    "LocalMatrices",
    "Muon",
    "NS_COEFFICIENTS",
    "OptimizerSet",
    "ParamSplit",
    "adamw_rms_scale",
    "build_optimizer",
    "build_scheduler",
    "lr_factor",
    "newton_schulz",
    "newton_schulz_flops",
    "resolve_auto_ns_dtype",
    "resolve_ns_dtype",
    "split_parameters",
    "uses_muon",
]
