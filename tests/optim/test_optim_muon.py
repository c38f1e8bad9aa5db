"""Muon against torch.optim.Muon, its update RMS, weight decay and Newton-Schulz call count."""

import math

import pytest
import torch

from wallwm_pretrain.optim import Muon, adamw_rms_scale, newton_schulz


def test_torch_has_the_reference_muon():
    """The reference below is torch.optim.Muon (torch >= 2.9, the floor in setup.cfg): an older
    torch fails here with the reason instead of skipping the bit-identity proofs."""
    assert hasattr(torch.optim, "Muon"), f"torch {torch.__version__} has no torch.optim.Muon; install torch>=2.9"


SHAPES = [(32, 32), (64, 16), (16, 64), (37, 23), (23, 37), (1, 9), (96, 96)]
STEPS = 10


def _run(opt_factory, shape, steps=STEPS, seed=0):
    """Train one matrix for `steps` steps on seeded gradients; return its trajectory."""
    g = torch.Generator().manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(shape, generator=g))
    opt = opt_factory([p])
    traj = []
    for _ in range(steps):
        p.grad = torch.randn(shape, generator=g)
        opt.step()
        traj.append(p.detach().clone())
    return traj, opt


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("nesterov", [True, False])
def test_bf16_is_bit_identical_to_torch_muon(shape, nesterov):
    # Same operations in the same order and dtype (bf16 Newton-Schulz via addmm, lerp momentum,
    # decay then scaled update in fp32), so no tolerance is needed: we assert torch.equal.
    hp = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=nesterov)
    ours, _ = _run(lambda ps: Muon(ps, ns_dtype="bfloat16", **hp), shape)
    ref, _ = _run(lambda ps: torch.optim.Muon(ps, adjust_lr_fn="match_rms_adamw", **hp), shape)
    for step, (a, b) in enumerate(zip(ours, ref)):
        assert torch.equal(a, b), f"step {step}: max abs diff {(a - b).abs().max().item()}"


@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_stays_within_bf16_rounding_of_torch_muon(shape):
    # Gradients do not depend on the parameters, so both runs see the same momentum and the
    # only difference is the Newton-Schulz output O. After k steps
    #   |W_fp32 - W_bf16| <= sum_j lr * scale * |O_fp32,j - O_bf16,j|.
    # A bf16 Newton-Schulz call rounds ~16 times in a row (input cast, 3 matmul results x 5
    # iterations), each with relative error <= 2^-9, i.e. <= 8 * 2^-8 of max|O|; the iteration's
    # slope > 1 at small singular values can double that, so we allow 16 * 2^-8 * max|O| per
    # step (measured worst case over many random matrices: ~10.4 * 2^-8).
    lr, hp = 0.02, dict(weight_decay=0.1, momentum=0.95, nesterov=True)
    ours, _ = _run(lambda ps: Muon(ps, lr=lr, ns_dtype="float32", **hp), shape)
    ref, _ = _run(
        lambda ps: torch.optim.Muon(ps, lr=lr, adjust_lr_fn="match_rms_adamw", **hp), shape
    )
    # max|O|: every entry is <= the largest singular value, <= 1.21 (max of p on [0, 1]).
    per_step = lr * adamw_rms_scale(*shape) * 16 * 2**-8 * 1.21
    for k, (a, b) in enumerate(zip(ours, ref), start=1):
        diff = (a - b).abs().max().item()
        assert diff <= k * per_step, f"step {k}: {diff} > {k * per_step}"
    # ... and the two precisions do differ, so this test compares something.
    assert not torch.equal(ours[-1], ref[-1])


def test_update_rms_matches_adamw_target():
    # With lr=1, wd=0, momentum=0 the step is -0.2 sqrt(max(m, n)) NS(G). An m x n matrix with
    # singular values sigma_i has RMS sqrt(sum sigma^2 / (m n)); with min(m, n) of them,
    # RMS(update) = 0.2 sqrt(max) sqrt(mean sigma^2 * min / (m n)) = 0.2 sqrt(mean sigma^2).
    # Exactly semi-orthogonal -> 0.2; Newton-Schulz's band [0.68, 1.13] -> [0.136, 0.227].
    for shape in [(64, 128), (128, 64), (96, 256), (200, 50)]:
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.zeros(shape))
        p.grad = torch.randn(shape)
        sv = torch.linalg.svdvals(newton_schulz(p.grad, dtype="float32"))
        Muon([p], lr=1.0, weight_decay=0.0, momentum=0.0).step()
        rms = p.detach().pow(2).mean().sqrt().item()
        assert rms == pytest.approx(0.2 * sv.pow(2).mean().sqrt().item(), rel=1e-5)
        assert 0.2 * 0.68 <= rms <= 0.2 * 1.135
    assert adamw_rms_scale(64, 256) == pytest.approx(0.2 * 16)


def test_decoupled_weight_decay_uses_unscaled_lr():
    # A zero gradient gives a zero Newton-Schulz output, leaving only p *= 1 - lr * wd, with
    # the plain lr (not lr * 0.2 sqrt(max(m, n))).
    p = torch.nn.Parameter(torch.randn(16, 64))
    p0 = p.detach().clone()
    p.grad = torch.zeros_like(p)
    Muon([p], lr=0.1, weight_decay=0.5).step()
    assert torch.equal(p.detach(), p0 * (1 - 0.1 * 0.5))


def test_first_step_follows_the_documented_order():
    # Step 1 from a zero buffer: M = (1 - mu) G; Nesterov U = lerp(G, M, mu) = (1 - mu^2) G.
    mu, lr, wd = 0.9, 0.05, 0.2
    g = torch.randn(24, 40)
    p = torch.nn.Parameter(torch.randn(24, 40))
    p0 = p.detach().clone()
    p.grad = g.clone()
    Muon([p], lr=lr, weight_decay=wd, momentum=mu).step()
    o = newton_schulz((1 - mu**2) * g)
    expected = p0 * (1 - lr * wd) - lr * 0.2 * math.sqrt(40) * o
    torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=0)


def test_counts_one_newton_schulz_call_per_matrix_per_step():
    ps = [torch.nn.Parameter(torch.randn(8, 8)) for _ in range(3)]
    opt = Muon(ps)
    for step in range(1, 4):
        for p in ps[:2]:  # the third has no gradient and must not be counted
            p.grad = torch.randn(8, 8)
        opt.step()
        assert opt.ns_calls == 2 * step


@pytest.mark.parametrize("kwargs", [dict(momentum=1.0), dict(lr=-1.0), dict(weight_decay=-0.1),
                                    dict(ns_dtype="float16"), dict(ns_steps=0)])
def test_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.randn(4, 4))], **kwargs)


def test_rejects_non_matrix_parameters():
    with pytest.raises(ValueError, match="2-D"):
        Muon([torch.nn.Parameter(torch.randn(4))])


def test_defaults_are_the_documented_ones():
    """Keller Jordan's quintic and torch.optim.Muon's momentum, Nesterov and eps (written out:
    a changed default changes every run that leaves it unset)."""
    from wallwm_pretrain.optim.muon import muon_defaults

    assert muon_defaults() == dict(
        lr=0.02, weight_decay=0.0, momentum=0.95, nesterov=True, ns_steps=5, ns_dtype="float32",
        ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_norm_scale=1.0, ns_gram=False)


@pytest.mark.parametrize("kwargs", [dict(lr=0.0), dict(momentum=0.0), dict(momentum=0.5), dict(ns_steps=1),
                                    dict(weight_decay=0.0)])
def test_accepts_the_edges_of_each_range(kwargs):
    """lr = 0 is where a warm-up starts; momentum 0 is plain orthogonalised gradients."""
    p = torch.nn.Parameter(torch.randn(4, 4))
    assert Muon([p], **kwargs).param_groups[0][next(iter(kwargs))] == next(iter(kwargs.values()))


@pytest.mark.parametrize("kwargs, message", [(dict(momentum=-0.1), r"momentum must be in \[0, 1\), got -0.1"),
                                             (dict(momentum=1.5), r"momentum must be in \[0, 1\), got 1.5"),
                                             (dict(lr=-1e-9), "lr must be >= 0"),
                                             (dict(ns_steps=0), "ns_steps must be >= 1, got 0")])
def test_rejects_values_just_outside_each_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Muon([torch.nn.Parameter(torch.randn(4, 4))], **kwargs)


def test_rejects_parameters_of_three_dimensions():
    with pytest.raises(ValueError, match=r"2-D parameters, got one of shape \(2, 4, 4\)"):
        Muon([torch.nn.Parameter(torch.randn(2, 4, 4))])


def test_a_parameter_without_gradient_does_not_stop_the_others():
    """Parameters after one without a gradient (or after a fused one) in a group still step."""
    from wallwm_pretrain.optim import FusedRows

    ps = [torch.nn.Parameter(torch.randn(6, 4)) for _ in range(3)]
    start = [p.detach().clone() for p in ps]
    ps[1].grad = torch.randn(6, 4)
    ps[2].grad = torch.randn(6, 4)
    opt = Muon(ps, lr=0.1, momentum=0.0, fused={ps[1]: FusedRows(("a", "b"), (1, 2), 2)})
    opt.step()
    assert torch.equal(ps[0].detach(), start[0])  # no gradient: untouched
    expected = start[2] - 0.1 * adamw_rms_scale(6, 4) * newton_schulz(ps[2].grad)
    torch.testing.assert_close(ps[2].detach(), expected, rtol=0, atol=1e-6)
    assert opt.ns_calls == 2 + 1  # the fused weight's two parts, then the plain one


def test_groups_saved_without_the_newer_keys_step_with_their_defaults():
    """A state dict from before ``ns_norm_scale`` and ``ns_gram`` existed loads and steps as the
    defaults (norm scale 1, the plain iteration: 32 x 8 is a shape the Gram form would take)."""
    g = torch.randn(32, 8)
    runs = []
    for drop in (False, True):
        p = torch.nn.Parameter(torch.ones(32, 8))
        opt = Muon([p], lr=0.1, momentum=0.0)
        state = opt.state_dict()
        if drop:
            for group in state["param_groups"]:
                del group["ns_norm_scale"], group["ns_gram"]
            opt.load_state_dict(state)
            assert "ns_norm_scale" not in opt.param_groups[0]
        p.grad = g.clone()
        opt.step()
        runs.append(p.detach().clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], torch.ones(32, 8))


def test_the_muon_signatures_resolve_for_typing_tools():
    """The module postpones its annotations; a broken one would only fail what reads the hints."""
    import typing
    from typing import Iterable

    from wallwm_pretrain.optim import muon

    hints = {f.__qualname__: typing.get_type_hints(f) for f in (
        muon.adamw_rms_scale, muon.momentum_update, muon.apply_update, muon.muon_defaults, muon.Muon.__init__,
        muon.Muon.step, muon.LocalMatrices.gather, muon.LocalMatrices.local, muon.LocalMatrices.logical_shape)}
    assert hints["Muon.__init__"]["params"] == Iterable[torch.Tensor] | Iterable[dict]
