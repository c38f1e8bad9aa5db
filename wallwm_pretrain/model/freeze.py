"""Freezing the components a training stage does not train (``model.train_parts``).

:func:`apply_train_parts` sets ``requires_grad`` on every parameter of a model (or of this rank's
pipeline chunks) from its component (``wallwm_pretrain/components.py``). The trainer calls it
right after building the chunks, before data-parallel wrapping and optimizer construction, so
a frozen parameter is in no DDP bucket (megatron's DDP skips ``requires_grad=False``), in
neither Muon nor AdamW and in no distributed-Muon plan (the optimizer set takes trainable
parameters only), and is never given a gradient. A frozen tower whose inputs do not require
gradients records no autograd graph at all: its forward runs as inference, nothing of it is
kept for backward. Frozen parameters stay in the state dict: checkpoints hold the whole model,
so the next stage starts from all of it.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from wallwm_pretrain.components import component_of, component_patterns, resolve_train_parts
from wallwm_pretrain.config import ModelConfig


def apply_train_parts(chunks: nn.Module | Iterable[nn.Module], cfg: ModelConfig) -> dict[str, int]:
    """Freeze every parameter outside ``cfg.train_parts``; train every one inside.

    Args:
        chunks: a model or this rank's pipeline chunks (whole-model parameter names).
        cfg: the ``model`` section.

    Returns:
        Parameter counts held here, ``trained.<component>`` and ``frozen.<component>`` for every
        component of the model (zeros included, so pipeline ranks can sum them key by key).

    Raises:
        ValueError: an unknown component name, or a parameter that belongs to no component.
    """
    chunks = [chunks] if isinstance(chunks, nn.Module) else list(chunks)
    patterns = component_patterns(cfg.kind, cfg.video_tower)
    trained = set(resolve_train_parts(cfg.train_parts, cfg.kind, cfg.video_tower))
    counts = {f"{state}.{c}": 0 for state in ("trained", "frozen") for c in patterns}
    for chunk in chunks:
        for name, param in chunk.named_parameters():
            component = component_of(name, patterns)
            train = component in trained
            param.requires_grad_(train)
            counts[f"{'trained' if train else 'frozen'}.{component}"] += param.numel()
    return counts


def describe_train_parts(counts: dict[str, int]) -> str:
    """One line per component: trained or frozen, and how many parameters."""
    components = sorted({k.split(".", 1)[1] for k in counts})
    lines = []
    for c in components:
        t, f = counts.get(f"trained.{c}", 0), counts.get(f"frozen.{c}", 0)
        state = "trained" if t and not f else "frozen" if f and not t else "partly trained" if t else "empty"
        lines.append(f"  {c:16s} {state:8s} {t + f:>14,d} parameters")
    return "\n".join(lines)
