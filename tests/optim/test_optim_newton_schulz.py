"""Newton-Schulz: the scalar map on singular values, its band, precision and cost model."""


import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from wallwm_pretrain.optim import NS_COEFFICIENTS, newton_schulz, newton_schulz_flops, ns_variant
from wallwm_pretrain.optim.newton_schulz import gram_is_cheaper, gram_newton_schulz_flops, ns_uses_gram


def _scalar_map(s: torch.Tensor, steps: int = 5, coefficients=NS_COEFFICIENTS) -> torch.Tensor:
    a, b, c = coefficients
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return s


def _band(lo: float, steps: int = 5) -> tuple[float, float]:
    """Range of the 5-step scalar map over normalised singular values in [lo, 1] (dense grid)."""
    grid = torch.linspace(lo, 1.0, 2_000_001, dtype=torch.float64)
    out = _scalar_map(grid, steps)
    return out.min().item(), out.max().item()


def _with_spectrum(m: int, n: int, s: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(m, len(s), generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, len(s), generator=g, dtype=torch.float64))
    return u @ torch.diag(s) @ v.T


# Wide, tall and odd shapes with aspect ratio >= ~2: a Gaussian matrix of that shape has its
# smallest singular value >= 0.03 of its Frobenius norm (checked below), far from zero.
RECT_SHAPES = [(64, 128), (128, 64), (96, 256), (33, 77), (77, 33)]


def test_band_of_the_standard_coefficients():
    # The iteration never converges to 1: p(1) = a + b + c = 0.701 and max p on [0, 1] is 1.2024.
    # For inputs in [0.01, 1] (after the Frobenius scaling) the 5-step map stays in
    # [0.6818, 1.1344], the "about 0.68..1.13" band.
    lo, hi = _band(0.01)
    assert lo == pytest.approx(0.6818, abs=1e-4)
    assert hi == pytest.approx(1.1344, abs=1e-4)
    assert sum(NS_COEFFICIENTS) == pytest.approx(0.701)


@pytest.mark.parametrize("shape", RECT_SHAPES)
def test_singular_values_lie_in_band(shape):
    torch.manual_seed(sum(shape))
    g = torch.randn(shape, dtype=torch.float64)
    sv_in = torch.linalg.svdvals(g) / g.norm()
    assert sv_in.min() >= 0.01  # precondition of the band below
    lo, hi = _band(0.01)
    sv32 = torch.linalg.svdvals(newton_schulz(g, dtype="float32").double())
    assert lo - 1e-4 <= sv32.min() and sv32.max() <= hi + 1e-4
    # bf16 rounds each element with relative error up to 2^-8; singular values move by a few
    # of those units (measured <= 0.003 here), so allow 0.02.
    sv16 = torch.linalg.svdvals(newton_schulz(g, dtype="bfloat16").double())
    assert lo - 0.02 <= sv16.min() and sv16.max() <= hi + 0.02


@pytest.mark.parametrize("m,n", [(48, 48), (40, 90), (90, 40)])
def test_output_singular_values_are_the_scalar_map_of_the_input(m, n):
    # X_k keeps the singular vectors of G, and each singular value goes through p five times.
    k = min(m, n)
    s = torch.linspace(0.05, 1.0, k, dtype=torch.float64)
    g = _with_spectrum(m, n, s, seed=m * n)
    expected = _scalar_map(s / s.norm()).sort().values
    got = torch.linalg.svdvals(newton_schulz(g, dtype="float32").double()).sort().values
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("shape", RECT_SHAPES + [(64, 64), (1, 7)])
def test_fp32_follows_the_exact_iteration_far_better_than_bf16(shape):
    # Reference: the same iteration in float64. fp32 unit roundoff is 2^-24 ~ 6e-8, bf16 2^-9.
    torch.manual_seed(7)
    g = torch.randn(shape, dtype=torch.float64)
    ref = newton_schulz(g, dtype="float64")
    err32 = ((newton_schulz(g, dtype="float32").double() - ref).norm() / ref.norm()).item()
    err16 = ((newton_schulz(g, dtype="bfloat16").double() - ref).norm() / ref.norm()).item()
    assert err32 < 1e-5
    assert err16 < 0.05
    assert err32 < err16 / 100


@pytest.mark.parametrize("shape", RECT_SHAPES)
def test_fp32_at_least_as_close_to_polar_factor_as_bf16(shape):
    torch.manual_seed(11)
    g = torch.randn(shape, dtype=torch.float64)
    u, s, vh = torch.linalg.svd(g, full_matrices=False)
    polar = u @ vh

    def dist(x):
        return (x.double() - polar).norm().item()

    # With the standard coefficients the distance is set by the band, not by rounding:
    # ||U p5(S) V^T - U V^T||_F = ||p5(s) - 1||_2 exactly, and fp32 reproduces that number.
    band_dist = (_scalar_map(s / g.norm()) - 1).norm().item()
    d32, d16 = dist(newton_schulz(g, dtype="float32")), dist(newton_schulz(g, dtype="bfloat16"))
    assert d32 == pytest.approx(band_dist, rel=1e-4)
    assert abs(d32 - band_dist) <= abs(d16 - band_dist)

    # With coefficients whose map converges to 1 (p(1) = 1, p'(1) = 0), many steps approach the
    # polar factor itself: fp32 down to rounding (~1e-6), bf16 stuck at its ~1e-2 rounding floor.
    converging = (15 / 8, -10 / 8, 3 / 8)
    c32 = dist(newton_schulz(g, steps=25, dtype="float32", coefficients=converging))
    c16 = dist(newton_schulz(g, steps=25, dtype="bfloat16", coefficients=converging))
    assert c32 < 1e-4 * polar.norm().item()
    assert c32 <= c16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_batch_matches_one_by_one(dtype):
    torch.manual_seed(3)
    for shape in [(4, 40, 24), (3, 24, 40), (2, 16, 16)]:
        x = torch.randn(shape)
        batched = newton_schulz(x, dtype=dtype)
        single = torch.stack([newton_schulz(m, dtype=dtype) for m in x])
        assert batched.shape == x.shape and batched.dtype == single.dtype
        # Same ops per matrix; equal on the CPU backends tried, but batched matmul kernels may
        # sum in another order, so compare to a few ulps of the compute dtype.
        tol = 1e-5 if dtype == "float32" else 2 * 2**-8
        torch.testing.assert_close(batched.float(), single.float(), atol=tol, rtol=0)


def test_input_is_not_modified_and_zero_gives_zero():
    x = torch.randn(8, 12, dtype=torch.bfloat16)
    before = x.clone()
    newton_schulz(x, dtype="bfloat16")  # `to(bfloat16)` returns x itself: must not divide in place
    assert torch.equal(x, before)
    z = newton_schulz(torch.zeros(5, 3))
    assert torch.equal(z, torch.zeros(5, 3))


def test_output_dtype_and_shape():
    x = torch.randn(10, 6)
    assert newton_schulz(x, dtype="bfloat16").dtype == torch.bfloat16
    assert newton_schulz(x, dtype=torch.float32).dtype == torch.float32
    assert newton_schulz(x).shape == (10, 6)


@pytest.mark.parametrize("bad", [dict(grad=torch.randn(3)), dict(grad=torch.randn(2, 2, 2, 2)),
                                 dict(grad=torch.randn(3, 3), steps=-1),
                                 dict(grad=torch.randn(3, 3), dtype="float16")])
def test_rejects_user_mistakes(bad):
    with pytest.raises(ValueError):
        newton_schulz(**bad)


@pytest.mark.parametrize("shape", [(64, 128), (128, 64), (3, 50, 20)])
def test_flop_estimate_matches_counted_matmul_flops(shape):
    x = torch.randn(shape)
    with FlopCounterMode(display=False) as counter:
        newton_schulz(x, steps=5)
    m, n = shape[-2:]
    batch = shape[0] if len(shape) == 3 else 1
    assert counter.get_total_flops() == batch * newton_schulz_flops(m, n, steps=5)
    s, l = min(m, n), max(m, n)
    assert newton_schulz_flops(m, n) == 4 * s * s * l + 2 * s**3
    assert newton_schulz_flops(m, n) == newton_schulz_flops(n, m)
    with pytest.raises(ValueError):
        newton_schulz_flops(0, 4)


# -- the Gram form ----------------------------------------------------------------------------
# fp32 tolerance of the Gram form against the standard quintic: both follow the exact (fp64)
# iteration to ~1e-6 per element on these shapes (measured: <= 8.4e-7 apart); 1e-5 leaves a
# tenfold margin while a wrong polynomial or orientation misses by O(0.1).
GRAM_ATOL = 1e-5


@pytest.mark.parametrize("shape", RECT_SHAPES + [(256, 1024), (2, 40, 96)])
def test_gram_form_matches_the_standard_quintic(shape):
    torch.manual_seed(sum(shape))
    g = torch.randn(shape)
    standard = newton_schulz(g, steps=5)
    gram = newton_schulz(g, steps=5, gram=True)
    torch.testing.assert_close(gram, standard, atol=GRAM_ATOL, rtol=0)
    exact = newton_schulz(g.double(), steps=5, dtype="float64")
    # and it is no worse a follower of the exact iteration than the standard form
    assert (gram.double() - exact).abs().max() <= 2 * (standard.double() - exact).abs().max() + 1e-7
    # the Gram form really ran: it is another sequence of roundings
    assert not torch.equal(gram, standard)


def test_gram_form_keeps_the_standard_path_where_it_is_not_cheaper():
    g = torch.randn(48, 64)  # aspect 1.33: the Gram form would cost more
    assert not gram_is_cheaper(48, 64, 5)
    assert torch.equal(newton_schulz(g, gram=True), newton_schulz(g))
    assert gram_is_cheaper(48, 96, 5)


def test_gram_flops_on_a_known_shape():
    # 256 x 1024, 5 iterations: standard 5 (4 s^2 l + 2 s^3), Gram 4 s^2 l + 34 s^3
    assert newton_schulz_flops(256, 1024, steps=5) == 1_509_949_440
    assert gram_newton_schulz_flops(256, 1024, 5) == 838_860_800
    assert gram_newton_schulz_flops(1024, 256, 5) == 838_860_800
    assert gram_newton_schulz_flops(256, 1024, 0) == 0


@pytest.mark.parametrize("shape", [(64, 160), (160, 64), (3, 40, 96)])
def test_gram_flop_count_matches_counted_matmul_flops(shape):
    x = torch.randn(shape)
    with FlopCounterMode(display=False) as counter:
        newton_schulz(x, steps=5, gram=True)
    m, n = shape[-2:]
    batch = shape[0] if len(shape) == 3 else 1
    assert counter.get_total_flops() == batch * gram_newton_schulz_flops(m, n, 5)


def test_gram_variant_is_the_quintic_in_gram_form():
    assert ns_variant("gram") == ns_variant("quintic")
    assert ns_uses_gram("gram") and not ns_uses_gram("quintic") and not ns_uses_gram("polar_express")
    with pytest.raises(ValueError, match="one of"):
        ns_uses_gram("syrk")


def test_step_coefficients_take_one_triple_or_one_per_step():
    from wallwm_pretrain.optim.newton_schulz import step_coefficients

    assert step_coefficients((1, 2, 3), 2) == [(1.0, 2.0, 3.0)] * 2
    assert step_coefficients(((1, 2, 3), (4, 5, 6)), 3) == [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0), (4.0, 5.0, 6.0)]
    three = ((1, 2, 3), (4, 5, 6), (7, 8, 9))  # three triples: not one triple of three numbers
    assert step_coefficients(three, 4) == [(1.0, 2.0, 3.0), (4.0, 5.0, 6.0), (7.0, 8.0, 9.0), (7.0, 8.0, 9.0)]
    for bad in [((1.0, 2.0, 3.0), (1.0, 2.0)), ((1.0, 2.0, 3.0, 4.0),), ()]:
        with pytest.raises(ValueError, match=r"three coefficients \(a, b, c\) or a sequence of such triples"):
            step_coefficients(bad, 2)
    for flat in [(1.0, 2.0, 3.0, 4.0), (1.0, 2.0)]:  # numbers, but not three: no triple to iterate
        with pytest.raises(TypeError):
            step_coefficients(flat, 2)


def test_a_variant_name_read_from_a_file_is_recognised():
    """Names from a YAML file are equal strings, not the same object as the literal."""
    assert ns_uses_gram("".join(["gr", "am"]))
    assert ns_variant("".join(["polar_", "express"])) == ns_variant("polar_express")


def test_norm_scale_divides_the_input_by_that_multiple_of_its_norm():
    """x0 = G / (scale ||G||_F), then the quintic, written out in float64."""
    g = torch.randn(6, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a, b, c = NS_COEFFICIENTS
    for scale in (1.5, 0.8, 2.0):
        x = g / (scale * g.norm())
        for _ in range(3):
            gram = x @ x.T
            x = a * x + (b * gram + c * gram @ gram) @ x
        got = newton_schulz(g, steps=3, dtype="float64", norm_scale=scale)
        torch.testing.assert_close(got, x, rtol=0, atol=1e-12)


def test_flop_counts_take_the_smallest_shapes_and_refuse_empty_ones():
    assert newton_schulz_flops(1, 1) == 6 and newton_schulz_flops(1, 1, steps=0) == 0
    assert gram_newton_schulz_flops(1, 1, 1) == 6  # 4 s^2 l + 2 s^3 steps, no P Q or P R P
    # two iterations: 4 s^2 l + R^2 twice (2 s^3 each) + P Q once (2 s^3) + P R P once (4 s^3)
    assert gram_newton_schulz_flops(2, 6, 2) == 4 * 4 * 6 + (2 * 2 + 2 + 4) * 8
    for count in (newton_schulz_flops, lambda r, c: gram_newton_schulz_flops(r, c, 1)):
        for rows, cols in ((0, 4), (4, 0), (0, 0)):
            with pytest.raises(ValueError, match=f"matrix sizes must be >= 1, got {rows} x {cols}"):
                count(rows, cols)
    for count in (newton_schulz_flops, gram_newton_schulz_flops):
        with pytest.raises(ValueError, match="steps must be >= 0, got -1"):
            count(3, 3, -1)


def test_the_newton_schulz_signatures_resolve_for_typing_tools():
    """The module postpones its annotations; a broken one would only fail what reads the hints."""
    import importlib
    import typing

    ns = importlib.import_module("wallwm_pretrain.optim.newton_schulz")  # the package exports the function by this name

    hints = {f.__name__: typing.get_type_hints(f) for f in (
        ns.ns_variant, ns.ns_uses_gram, ns.step_coefficients, ns.resolve_ns_dtype, ns.newton_schulz,
        ns.newton_schulz_flops, ns._gram_iterations, ns.gram_polynomial, ns.gram_is_cheaper, ns.gram_newton_schulz_flops)}
    assert hints["newton_schulz"]["dtype"] == str | torch.dtype
    assert hints["resolve_ns_dtype"]["dtype"] == str | torch.dtype
    assert hints["gram_polynomial"]["return"] == torch.Tensor | None


def test_the_quintic_and_gram_variants_keep_the_norm_scale_one():
    assert ns_variant("quintic") == (NS_COEFFICIENTS, 1.0) and ns_variant("gram") == (NS_COEFFICIENTS, 1.0)


def test_a_tie_in_flops_keeps_the_standard_form():
    """At l = 1.5 s both forms cost the same (4 s^2 l (k - 1) = 6 s^3 (k - 1)); the Gram form is
    taken only when strictly cheaper."""
    assert gram_newton_schulz_flops(2, 3, 5) == newton_schulz_flops(2, 3, steps=5)
    assert not gram_is_cheaper(2, 3, 5) and gram_is_cheaper(2, 4, 5)


@pytest.mark.parametrize("steps", [2, 4])
def test_gram_flop_count_matches_counted_matmul_flops_for_even_steps(steps):
    x = torch.randn(16, 64)
    with FlopCounterMode(display=False) as counter:
        newton_schulz(x, steps=steps, gram=True)
    assert counter.get_total_flops() == gram_newton_schulz_flops(16, 64, steps)


def test_zero_steps_return_the_scaled_input():
    g = torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(newton_schulz(g, steps=0), g / g.norm(), rtol=0, atol=1e-7)
