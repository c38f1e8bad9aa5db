"""Names of optimizer-state tensors in a checkpoint, and the check that a saved split fits.

A sharded checkpoint names each tensor of the canonical (single-process) optimizer state
``optim/<optimizer>/<parameter>/<key>`` (``optim/muon/<p>/momentum_buffer``,
``optim/adamw/<p>/exp_avg`` ...), with the parameter's whole (TP=1) shape; AdamW's step count
is a 0-d tensor. The non-tensor part (name split, hyper-parameters and scheduler state per
group kind) is the by-name structure of :mod:`.by_name`.
"""

from __future__ import annotations

from wallwm_pretrain.checkpoint.optim.by_name import GROUPS

PREFIX = "optim/"


def optim_name(optimizer: str, param: str, key: str) -> str:
    """The checkpoint name of one canonical optimizer-state tensor."""
    return f"{PREFIX}{optimizer}/{param}/{key}"


def split_optim_name(name: str) -> tuple[str, str, str]:
    """``(optimizer, parameter, key)`` of :func:`optim_name` (parameter names hold no '/')."""
    optimizer, rest = name[len(PREFIX):].split("/", 1)
    param, key = rest.rsplit("/", 1)
    return optimizer, param, key


def check_split(saved: dict[str, list[str]], mine: dict[str, list[str]]) -> None:
    """Raise unless every parameter of this rank is in the same group of the saved split."""
    for group in GROUPS:
        missing = sorted(set(mine[group]) - set(saved[group]))
        if missing:
            raise ValueError(
                f"optimizer state does not match the model: {len(missing)} parameters of group {group!r} "
                f"are not in the saved group (first 5: {missing[:5]})"
            )
