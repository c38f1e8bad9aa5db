"""Muon: momentum, then Newton-Schulz orthogonalisation, for hidden 2-D weight matrices.

One step per matrix W with gradient G (the order matches ``torch.optim.Muon``):

    M  <- lerp(M, G, 1 - mu)                   momentum as an EMA of gradients
    U  <- lerp(G, M, mu) if nesterov else M     Nesterov look-ahead
    O  <- NewtonSchulz(U)                      in ``ns_dtype``
    W  <- W * (1 - lr * wd)                    decoupled weight decay, with the unscaled lr
    W  <- W - lr * 0.2 * sqrt(max(A, B)) * O

The EMA form of momentum differs from M <- mu M + G only by the factor (1 - mu), which the
normalisation inside Newton-Schulz removes. The 0.2 sqrt(max(A, B)) factor ("match_rms_adamw")
makes the update's RMS about 0.2, the typical RMS of an AdamW update, so Muon can share the
learning rate and weight decay tuned for AdamW. Trade-off: one Newton-Schulz call per matrix
per step, i.e. O(s^2 l) extra flops against AdamW's O(s l); this optimizer does them all
locally. A tensor-parallel slice of a matrix is orthogonalised as the whole matrix through the
``matrices`` hook (see :class:`LocalMatrices`). A fused weight (QKV, gate/up, KV) is
orthogonalised as the logical matrices it holds when ``fused`` describes its rows (see
:mod:`.fused`); each part is scaled by its own shape.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Mapping, Optional

import torch
from torch import Tensor

from .fused import FusedRows
from .newton_schulz import (
    DEFAULT_EPS,
    DEFAULT_NS_STEPS,
    NS_COEFFICIENTS,
    Coefficients,
    newton_schulz,
    resolve_ns_dtype,
)


def adamw_rms_scale(rows: int, cols: int) -> float:
    """The "match_rms_adamw" factor 0.2 * sqrt(max(rows, cols)).

    An m x n semi-orthogonal matrix has min(m, n) unit singular values, hence RMS
    sqrt(min / (m n)) = 1 / sqrt(max(m, n)); multiplying by this factor gives RMS 0.2.

    Args:
        rows: first dimension of the parameter.
        cols: second dimension of the parameter.

    Returns:
        The factor applied to the learning rate of that parameter.
    """
    return 0.2 * math.sqrt(max(rows, cols))


def momentum_update(buf: Tensor, grad: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """Advance the momentum buffer in place and return the matrix to orthogonalise.

    Elementwise only, so a slice of ``buf``/``grad`` gives exactly the slice of the result:
    distributed Muon relies on this to match the single-process update bit for bit.

    Args:
        buf: momentum buffer (EMA of gradients), updated in place.
        grad: this step's gradient.
        momentum: EMA coefficient mu.
        nesterov: return the look-ahead lerp(G, M, mu) instead of M.
    """
    buf.lerp_(grad, 1.0 - momentum)
    return grad.lerp(buf, momentum) if nesterov else buf


def apply_update(target: Tensor, ortho: Tensor, lr: float, scale: float) -> None:
    """``target -= lr * scale * ortho`` in place (``ortho`` reshaped to ``target``'s shape).

    One shared primitive, so the single-process and the distributed optimizer round alike.
    """
    target.add_(ortho.reshape(target.shape), alpha=-lr * scale)


class LocalMatrices:
    """Where Muon finds the whole matrix of a parameter: here, the parameter is the matrix.

    A tensor-parallel run holds only a slice of some matrices; it passes Muon an object with
    these three methods that gathers the slices into the logical matrix and cuts this rank's
    slice back out (``wallwm_pretrain.optim.tp_matrices``), so orthogonalisation and the
    update scale always see the matrix of the single-process model.
    """

    def gather(self, param: Tensor, update: Tensor) -> Tensor:
        """The whole logical matrix of which ``update`` is ``param``'s local part."""
        return update

    def local(self, param: Tensor, full: Tensor) -> Tensor:
        """``param``'s part of a whole logical matrix (inverse of :meth:`gather`)."""
        return full

    def logical_shape(self, param: Tensor) -> tuple[int, int]:
        """Shape of the whole logical matrix."""
        return param.size(0), param.size(1)


def muon_defaults(
    lr: float = 0.02,
    weight_decay: float = 0.0,
    momentum: float = 0.95,
    nesterov: bool = True,
    ns_steps: int = DEFAULT_NS_STEPS,
    ns_dtype: str = "float32",
    ns_coefficients: Coefficients = NS_COEFFICIENTS,
    eps: float = DEFAULT_EPS,
    ns_norm_scale: float = 1.0,
    ns_gram: bool = False,
) -> dict:
    """Checked param-group defaults of Muon (shared by :class:`Muon` and the distributed one).

    Args:
        lr: learning rate before the per-shape 0.2 sqrt(max(A, B)) factor.
        weight_decay: decoupled weight decay; each step multiplies W by 1 - lr * weight_decay.
        momentum: EMA coefficient mu of the momentum buffer, in [0, 1).
        nesterov: use the Nesterov look-ahead lerp(G, M, mu) instead of M.
        ns_steps: Newton-Schulz iterations.
        ns_dtype: Newton-Schulz precision, ``float32`` or ``bfloat16``.
        ns_coefficients: quintic coefficients (a, b, c), or one triple per step.
        eps: Frobenius-norm floor inside Newton-Schulz.
        ns_norm_scale: Newton-Schulz divides its input by this times its Frobenius norm.
        ns_gram: run Newton-Schulz in the Gram form where it is cheaper (variant ``gram``).

    Raises:
        ValueError: naming the hyper-parameter out of range.
    """
    if lr < 0.0:
        raise ValueError(f"Muon lr must be >= 0, got {lr}")
    if weight_decay < 0.0:
        raise ValueError(f"Muon weight_decay must be >= 0, got {weight_decay}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"Muon momentum must be in [0, 1), got {momentum}")
    if ns_steps < 1:
        raise ValueError(f"Muon ns_steps must be >= 1, got {ns_steps}")
    return dict(
        lr=lr,
        weight_decay=weight_decay,
        momentum=momentum,
        nesterov=nesterov,
        ns_steps=ns_steps,
        # stored by name, not as a torch.dtype, so state_dict() holds only plain values
        ns_dtype=str(resolve_ns_dtype(ns_dtype)).removeprefix("torch."),
        ns_coefficients=tuple(ns_coefficients),
        eps=eps,
        ns_norm_scale=ns_norm_scale,
        ns_gram=bool(ns_gram),
    )


class Muon(torch.optim.Optimizer):
    """Muon optimizer for 2-D parameters (see the module docstring for the update).

    Attributes:
        ns_calls: Newton-Schulz calls made so far (one per matrix with a gradient per step).
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        matrices: Optional[LocalMatrices] = None,
        fused: Optional[Mapping[Tensor, FusedRows]] = None,
        **hyper,
    ) -> None:
        """Create the optimizer.

        Args:
            params: 2-D tensors, or param-group dicts holding them.
            matrices: how to reach the whole matrix of a parameter that holds a slice of it
                (default :class:`LocalMatrices`: every parameter is whole).
            fused: row layouts of fused weights (keyed by the parameter tensor); each is
                orthogonalised per logical matrix. Parameters not in it are one matrix each.
            hyper: the hyper-parameters of :func:`muon_defaults` (``lr``, ``weight_decay``,
                ``momentum``, ``nesterov``, ``ns_steps``, ``ns_dtype``, ``ns_coefficients``,
                ``eps``, ``ns_norm_scale``, ``ns_gram``), by keyword, with its defaults.

        Raises:
            ValueError: a bad hyper-parameter, a parameter that is not 2-D, a fused layout that
                does not fit its parameter, or ``fused`` together with a slicing ``matrices``
                hook (the distributed optimizer splits slices itself).
        """
        defaults = muon_defaults(**hyper)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(
                        f"Muon only takes 2-D parameters, got one of shape {tuple(p.shape)}; "
                        "give it to AdamW instead"
                    )
        self.ns_calls = 0
        self.matrices = matrices if matrices is not None else LocalMatrices()
        self.fused: dict[Tensor, FusedRows] = dict(fused or {})
        if self.fused and type(self.matrices) is not LocalMatrices:
            raise ValueError(
                "Muon: fused layouts need whole parameters; a tensor-parallel run splits fused "
                "slices with wallwm_pretrain.optim.distributed.muon instead of a matrices hook"
            )
        for p, layout in self.fused.items():
            layout.check(p)

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Tensor]] = None) -> Optional[Tensor]:
        """Update every parameter that has a gradient.

        Args:
            closure: optional callable that re-evaluates the model and returns the loss.

        Returns:
            The closure's loss, or None.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr = group["lr"]
            mu = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise ValueError("Muon does not support sparse gradients")
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(
                        grad, memory_format=torch.preserve_format
                    )
                update = momentum_update(state["momentum_buffer"], grad, mu, group["nesterov"])
                ns = dict(
                    steps=group["ns_steps"],
                    dtype=group["ns_dtype"],
                    coefficients=group["ns_coefficients"],
                    eps=group["eps"],
                    norm_scale=group.get("ns_norm_scale", 1.0),
                    gram=group.get("ns_gram", False),
                )
                layout = self.fused.get(p)
                if layout is not None:
                    orthos = [newton_schulz(part, **ns) for part in layout.split(update)]
                    self.ns_calls += len(orthos)
                    # Weight decay uses the unscaled lr, so its strength does not depend on shape.
                    p.mul_(1.0 - lr * group["weight_decay"])
                    for j, ortho in enumerate(orthos):
                        apply_update(layout.part_view(p, j), ortho, lr, adamw_rms_scale(*ortho.shape))
                    continue

                # A sliced matrix is orthogonalised whole: orthogonalising each slice on its
                # own gives another matrix than slicing the orthogonalised whole.
                ortho = newton_schulz(self.matrices.gather(p, update), **ns)
                ortho = self.matrices.local(p, ortho)
                self.ns_calls += 1

                # Weight decay uses the unscaled lr, so its strength does not depend on shape.
                p.mul_(1.0 - lr * group["weight_decay"])
                apply_update(p, ortho, lr, adamw_rms_scale(*self.matrices.logical_shape(p)))
        return loss
