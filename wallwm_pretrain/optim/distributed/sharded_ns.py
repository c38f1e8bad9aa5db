"""Newton-Schulz on tensor-parallel pieces: one all-reduce of the Gram matrix instead of a gather.

Owner mode (:mod:`.muon`) orthogonalises a tensor-parallel matrix whole on its home, so the other
TP ranks' pieces travel to the home and the result's pieces travel back: 2 (tp-1)/tp of the
matrix's elements on top of the data-parallel all-reduce bound. With ``optim.muon_tp_ns=sharded``
a matrix that passes :func:`sharded_ns_saves_bytes` stays in pieces instead: the TP ranks at the
home's data-parallel index each hold their piece's reduced gradient and momentum, and run the
iteration together through the Gram form of :mod:`~wallwm_pretrain.optim.newton_schulz`. Let
the pieces split the long side L (they are column blocks X_t of the u x L matrix X in the
orientation whose contraction runs over the split dimension, u the other side):

- each rank computes its partial Gram X_t X_t^T (u x u); one all-reduce over the TP group sums
  them to R = X X^T (for the whole bucket at once);
- the Frobenius norm is sqrt(trace R), so the normalisation needs no other collective;
- every rank evaluates the same polynomial Q of R (:func:`~..newton_schulz.gram_polynomial`) and
  keeps Q X_t / ||X||: its own columns of the result.

Bytes, summed over the ranks, per matrix: the all-reduce moves tp x 2 (tp-1)/tp u^2, the gather
to the home and the scatter back that it replaces (tp-1)/tp u L each, so the trade pays where
tp u^2 < u L, i.e. L > tp u: long, thin matrices split along their long side. The standard (non-Gram) iteration would need one such all-reduce per iteration
(five), paying only for L > 5 tp u. Squares, and matrices split along their short side, keep the
gather path.

Precision: the sums run in another order than single-process Muon's (partial Gram matrices,
the Gram form's polynomial), so the result equals it to rounding, not to the bit (fp32, the
tests' model: weights within 9.2e-7 of single-process Muon's after 10 steps). Trade-off: the u x u polynomial (about 8 u^3 flops per
iteration) is computed on every TP rank of the group, and the ownership plan balances homes as
if one rank did the whole matrix.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from wallwm_pretrain.optim.newton_schulz import gram_polynomial, resolve_ns_dtype, step_coefficients

TP_NS_MODES = ("gather", "sharded", "sharded_all")


def sharded_ns_saves_bytes(rows: int, cols: int, tp_dim: int | None, tp: int) -> bool:
    """Whether a matrix split over ``tp`` ranks along ``tp_dim`` moves fewer bytes sharded.

    The Gram all-reduce (tp ranks x 2 (tp-1)/tp u^2) against the whole-matrix gather and
    scatter (2 (tp-1)/tp u L in all), u the unsplit side, L the split one: ``L > tp * u``.
    """
    if tp_dim is None or tp < 2:
        return False
    split, other = (rows, cols) if tp_dim == 0 else (cols, rows)
    return split > tp * other


def keeps_pieces(tp_ns: str, rows: int, cols: int, tp_dim: int | None, tp: int) -> bool:
    """Whether ``optim.muon_tp_ns=tp_ns`` orthogonalises this matrix in its TP pieces:
    ``sharded`` where that saves bytes, ``sharded_all`` every split matrix (to compare bytes and
    to test the sharded path on any shape), ``gather`` none."""
    if tp_dim is None or tp < 2 or tp_ns == "gather":
        return False
    return tp_ns == "sharded_all" or sharded_ns_saves_bytes(rows, cols, tp_dim, tp)


def _columns(piece: Tensor, tp_dim: int) -> Tensor:
    """The piece in the orientation whose columns are the split dimension (a view)."""
    return piece.mT if tp_dim == 0 else piece


def sharded_newton_schulz(
    pieces: list[Tensor],
    tp_dims: list[int],
    group,
    steps: int,
    dtype: str | torch.dtype,
    coefficients,
    eps: float,
    norm_scale: float = 1.0,
) -> list[Tensor]:
    """Orthogonalise matrices held in tensor-parallel pieces (module docstring); a collective
    over ``group`` (every rank passes its pieces of the same matrices, in the same order).

    Args:
        pieces: this rank's piece of each matrix (its rows if ``tp_dims[i] == 0``, else its
            columns; with a partition stride the piece's rows/columns need not be contiguous in
            the whole matrix: the Gram sum does not depend on their order).
        tp_dims: the dimension each matrix is split along.
        group: the tensor-parallel process group of the ranks holding the pieces.
        steps, dtype, coefficients, eps, norm_scale: as :func:`~..newton_schulz.newton_schulz`.

    Returns:
        This rank's piece of each orthogonalised matrix, in ``dtype``.
    """
    if not pieces:
        return []
    compute = resolve_ns_dtype(dtype)
    per_step = step_coefficients(coefficients, steps)
    cols = [_columns(p.to(compute), d) for p, d in zip(pieces, tp_dims)]
    grams = [x @ x.mT for x in cols]
    flat = torch.cat([r.reshape(-1) for r in grams])
    dist.all_reduce(flat, group=group)
    out = []
    for x, r0, d in zip(cols, flat.split([r.numel() for r in grams]), tp_dims):
        u = x.size(0)
        r = r0.view(u, u)
        norm = r.diagonal().sum().clamp(min=0).sqrt()  # Frobenius norm of the whole matrix
        if norm_scale != 1.0:
            norm = norm * norm_scale
        norm = norm.clamp(min=eps)
        q = gram_polynomial(r / (norm * norm), per_step)
        y = x / norm if q is None else q @ (x / norm)
        out.append(y.mT if d == 0 else y)
    return out
