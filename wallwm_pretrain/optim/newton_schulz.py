"""Quintic Newton-Schulz orthogonalisation, the core of Muon.

Given a matrix G = U S V^T, the iteration X <- a X + (b A + c A^2) X with A = X X^T maps every
singular value s through p(s) = a s + b s^3 + c s^5 and leaves U and V alone, so after a few
steps X ~ U S' V^T with S' close to the identity. The coefficients (3.4445, -4.7750, 2.0315)
maximise the slope at zero (small singular values grow fast) at the price of never converging
exactly: after 5 steps the singular values oscillate in a band of roughly [0.68, 1.13] instead of
sitting at 1. That band costs nothing in training quality and saves several iterations.

The function is pure (no state, no communication) and accepts a batch of same-shape matrices,
so a distributed optimizer can gather equal shapes and orthogonalise them in one call on an
owner rank. Trade-off: bfloat16 halves memory traffic and is much faster on GPUs, but rounds
each output element with relative error ~2^-8; float32 is the accurate choice on CPU.

Variants (:func:`ns_variant`): ``quintic`` repeats the coefficients above at every step;
``polar_express`` uses a different quintic per step, each the minimax-optimal odd polynomial for
the interval that the previous steps left, so the singular values do converge towards 1 (same
three matmuls per step, hence the same cost). Coefficients from N. Amsel, D. Persson,
C. Musco, R. M. Gower, "The Polar Express: Optimal Matrix Sign Methods and Their Application to
the Muon Algorithm", arXiv:2505.16932 (Algorithm 1: degree 5, lower bound 1e-3, every step but
the last divided by a safety factor 1.01, and the input scaled by 1.01 times its Frobenius norm
so that bf16 rounding cannot push a singular value above the interval the polynomials were
fitted on). ``gram`` is the quintic coefficients run through the Gram form
(:func:`gram_newton_schulz`): the same polynomial in X X^T, evaluated on the small s x s side,
so a rectangular matrix costs fewer flops (see :func:`gram_newton_schulz_flops`).
"""

from __future__ import annotations

import torch
from torch import Tensor

NS_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
DEFAULT_NS_STEPS = 5
DEFAULT_EPS = 1e-7

# Published per-step polynomials of Polar Express (arXiv:2505.16932, Algorithm 1), before the
# safety factor; steps beyond the list keep using the last one, (15/8, -10/8, 3/8), the
# classical degree-5 Newton-Schulz polynomial to which the optimal ones converge.
_POLAR_EXPRESS_RAW: tuple[tuple[float, float, float], ...] = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
POLAR_EXPRESS_SAFETY = 1.01
# p(x / s) = (a / s) x + (b / s^3) x^3 + (c / s^5) x^5: each polynomial stretched to [0, s].
POLAR_EXPRESS_COEFFICIENTS: tuple[tuple[float, float, float], ...] = tuple(
    (a / POLAR_EXPRESS_SAFETY, b / POLAR_EXPRESS_SAFETY**3, c / POLAR_EXPRESS_SAFETY**5)
    for a, b, c in _POLAR_EXPRESS_RAW[:-1]
) + (_POLAR_EXPRESS_RAW[-1],)

Coefficients = tuple[float, float, float] | tuple[tuple[float, float, float], ...]

NS_VARIANTS = ("quintic", "polar_express", "gram")


def ns_variant(name: str) -> tuple[Coefficients, float]:
    """Coefficients and input norm scale of a named Newton-Schulz variant.

    Args:
        name: ``quintic`` (fixed (3.4445, -4.7750, 2.0315), norm scale 1), ``polar_express``
            (per-step coefficients, norm scale 1.01) or ``gram`` (the quintic's coefficients;
            :func:`ns_uses_gram` says to evaluate them in the Gram form).

    Returns:
        ``(coefficients, norm_scale)`` for :func:`newton_schulz`.

    Raises:
        ValueError: an unknown name.
    """
    if name in ("quintic", "gram"):
        return NS_COEFFICIENTS, 1.0
    if name == "polar_express":
        return POLAR_EXPRESS_COEFFICIENTS, POLAR_EXPRESS_SAFETY
    raise ValueError(f"Newton-Schulz variant must be one of {NS_VARIANTS}, got {name!r}")


def ns_uses_gram(name: str) -> bool:
    """Whether the named variant runs in the Gram form (:func:`gram_newton_schulz`).

    Raises:
        ValueError: an unknown name.
    """
    ns_variant(name)
    return name == "gram"


def step_coefficients(coefficients: Coefficients, steps: int) -> list[tuple[float, float, float]]:
    """The ``(a, b, c)`` of each of ``steps`` iterations.

    Args:
        coefficients: one triple (used at every step) or a sequence of triples, one per step;
            a sequence shorter than ``steps`` repeats its last triple.
        steps: number of iterations.

    Returns:
        ``steps`` triples.

    Raises:
        ValueError: a triple that does not hold three numbers, or an empty sequence.
    """
    if len(coefficients) == 3 and all(isinstance(c, (int, float)) for c in coefficients):
        return [tuple(float(c) for c in coefficients)] * steps  # type: ignore[list-item]
    triples = [tuple(float(c) for c in t) for t in coefficients]  # type: ignore[union-attr]
    if not triples or any(len(t) != 3 for t in triples):
        raise ValueError(
            f"newton_schulz needs three coefficients (a, b, c) or a sequence of such triples, got {coefficients}"
        )
    return [triples[min(i, len(triples) - 1)] for i in range(steps)]  # type: ignore[misc]

_DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    # Only as a reference for tests and benchmarks; no config selects it.
    "float64": torch.float64,
}


def resolve_ns_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Turn ``"float32"`` / ``"bfloat16"`` (or a torch dtype) into a torch dtype.

    Args:
        dtype: a name from ``float32``, ``bfloat16``, ``float64`` or the torch dtype itself.

    Returns:
        The torch dtype.

    Raises:
        ValueError: for any other dtype.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"Newton-Schulz dtype must be one of {sorted(_DTYPES)}, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Newton-Schulz dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def newton_schulz(
    grad: Tensor,
    steps: int = DEFAULT_NS_STEPS,
    dtype: str | torch.dtype = torch.float32,
    coefficients: Coefficients = NS_COEFFICIENTS,
    eps: float = DEFAULT_EPS,
    norm_scale: float = 1.0,
    gram: bool = False,
) -> Tensor:
    """Approximately orthogonalise a matrix, or each matrix of a batch.

    Args:
        grad: ``[m, n]`` or ``[B, m, n]``. It is never modified.
        steps: number of quintic iterations (>= 0).
        dtype: the precision of the whole iteration, ``float32`` or ``bfloat16``.
        coefficients: ``(a, b, c)`` of p(s) = a s + b s^3 + c s^5, or one such triple per step
            (see :func:`step_coefficients`).
        eps: floor of the Frobenius norm used to scale the input, so a zero matrix gives zeros.
        norm_scale: the input is divided by ``norm_scale`` times its Frobenius norm (1.01 for
            Polar Express, see :func:`ns_variant`).
        gram: evaluate the same iteration in the Gram form (:func:`gram_newton_schulz`) where
            that costs fewer flops (:func:`gram_is_cheaper`); the standard form elsewhere.

    Returns:
        A tensor of ``grad``'s shape in ``dtype`` whose singular values lie near 1 (same
        singular vectors as ``grad``).

    Raises:
        ValueError: wrong rank, negative ``steps`` or an unsupported ``dtype``.
    """
    if grad.ndim not in (2, 3):
        raise ValueError(
            f"newton_schulz needs a [m, n] or [B, m, n] tensor, got shape {tuple(grad.shape)}"
        )
    if steps < 0:
        raise ValueError(f"newton_schulz needs steps >= 0, got {steps}")
    per_step = step_coefficients(coefficients, steps)
    compute_dtype = resolve_ns_dtype(dtype)

    x = grad.to(compute_dtype)
    # Work on the wide orientation so the Gram matrix X X^T is the small min(m, n) square.
    tall = grad.size(-2) > grad.size(-1)
    if tall:
        x = x.mT
    # Frobenius norm >= spectral norm, so dividing puts every singular value in [0, 1], the
    # interval the coefficients were tuned for. Out of place: `to` may return `grad` itself.
    norm = x.norm() if x.ndim == 2 else x.norm(dim=(-2, -1), keepdim=True)
    if norm_scale != 1.0:  # skipped at 1: keeps the quintic path bit-identical to torch's Muon
        norm = norm * norm_scale
    x = x / norm.clamp(min=eps)
    if gram and gram_is_cheaper(x.size(-2), x.size(-1), len(per_step)):
        x = _gram_iterations(x, per_step)
        return x.mT if tall else x

    # addmm/baddbmm fuse the scaled sums into the matmuls: fewer passes over memory.
    batched = x.ndim == 3
    mul_add = torch.baddbmm if batched else torch.addmm
    for a, b, c in per_step:
        gram = x @ x.mT
        poly = mul_add(gram, gram, gram, beta=b, alpha=c)  # b A + c A^2
        x = mul_add(x, poly, x, beta=a)  # a X + (b A + c A^2) X

    if tall:
        x = x.mT
    return x


def newton_schulz_flops(rows: int, cols: int, steps: int = 1) -> int:
    """Estimated floating-point operations of :func:`newton_schulz` on one ``rows x cols`` matrix.

    With s = min(rows, cols) and l = max(rows, cols), one iteration costs three matmuls:
    X X^T (2 s^2 l), A A (2 s^3) and (b A + c A^2) X (2 s^2 l), i.e. 4 s^2 l + 2 s^3. Elementwise
    work is O(s l) and ignored. Used to balance matrices across ranks.

    Args:
        rows: first dimension of the matrix.
        cols: second dimension of the matrix.
        steps: iterations to count; the default 1 gives the per-iteration cost.

    Returns:
        The estimate, as an integer.

    Raises:
        ValueError: non-positive sizes or negative steps.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"matrix sizes must be >= 1, got {rows} x {cols}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    s, l = min(rows, cols), max(rows, cols)
    return steps * (4 * s * s * l + 2 * s**3)


def _gram_iterations(x: Tensor, per_step: list[tuple[float, float, float]]) -> Tensor:
    """The iterations of :func:`newton_schulz` on a wide, normalised ``x`` (s x l, s <= l).

    Every iterate is X_k = Q_k X_0 with Q_k a polynomial in R_0 = X_0 X_0^T, so the iteration can
    run on s x s matrices only: with R_k = X_k X_k^T and P_k = a I + b R_k + c R_k^2,
    X_{k+1} = P_k X_k gives Q_{k+1} = P_k Q_k and R_{k+1} = P_k R_k P_k (all polynomials in R_0,
    so they commute). X_0 is touched twice, for R_0 and for the final Q X_0.
    """
    q = gram_polynomial(x @ x.mT, per_step)
    return x if q is None else q @ x


def gram_polynomial(r: Tensor, per_step: list[tuple[float, float, float]]) -> Tensor | None:
    """Q with X_steps = Q X_0, from R_0 = X_0 X_0^T of a normalised X_0 (see :func:`_gram_iterations`).

    Only the s x s Gram matrix is needed, so ranks that each hold some columns of X_0 can sum
    their partial Gram matrices and apply Q to their own columns (tensor-parallel Newton-Schulz,
    :mod:`~wallwm_pretrain.optim.distributed.sharded_ns`). ``None`` for zero steps.
    """
    batched = r.ndim == 3
    mul_add = torch.baddbmm if batched else torch.addmm
    q = None
    last = len(per_step) - 1
    for k, (a, b, c) in enumerate(per_step):
        p = mul_add(r, r, r, beta=b, alpha=c)  # b R + c R^2
        p.diagonal(dim1=-2, dim2=-1).add_(a)  # + a I
        q = p if q is None else p @ q
        if k < last:  # the last R is never read
            r = p @ (r @ p)
    return q


def gram_is_cheaper(rows: int, cols: int, steps: int) -> bool:
    """Whether the Gram form costs fewer flops than the standard one for this shape."""
    return gram_newton_schulz_flops(rows, cols, steps) < newton_schulz_flops(rows, cols, steps)


def gram_newton_schulz_flops(rows: int, cols: int, steps: int) -> int:
    """Matmul flops of :func:`_gram_iterations` on one ``rows x cols`` matrix, ``steps`` iterations.

    With s = min, l = max: R_0 = X X^T and the final Q X cost 2 s^2 l each; per iteration R^2
    costs 2 s^3, P Q 2 s^3 (not in the first iteration, where Q = P) and P R P 4 s^3 (not in
    the last). Against the standard ``steps * (4 s^2 l + 2 s^3)`` (:func:`newton_schulz_flops`)
    the long side is read twice instead of twice per iteration; the square work grows from
    2 s^3 to about 8 s^3 per iteration, so the Gram form wins once l / s exceeds about 1.9
    (5 iterations). Elementwise work is O(s^2) and ignored.

    Raises:
        ValueError: non-positive sizes or negative steps.
    """
    if rows < 1 or cols < 1:
        raise ValueError(f"matrix sizes must be >= 1, got {rows} x {cols}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if steps == 0:
        return 0
    s, l = min(rows, cols), max(rows, cols)
    square = 2 * s**3 * steps + 2 * s**3 * (steps - 1) + 4 * s**3 * (steps - 1)
    return 4 * s * s * l + square
