"""Tolerances and checks shared by the TP/DP and pipeline equivalence tests.

Tolerances (fp32). The parallel runs add the same numbers in another order: the TP all-reduce
sums partial matmuls over the two halves of a contraction, the DP all-reduce sums the two
halves of the batch, microbatches add their gradient shares one after another, pipeline ranks
add the gradients of the passed conditioning (caption states, timestep embeddings) stage by
stage, the grad norm adds per-slice and per-stage squares. Each such sum differs from the
single-process one by a few ulp (fp32 eps = 1.2e-7), hence losses and gradients agree to
~1e-7. Three optimizer steps carry these differences through Newton-Schulz (a quintic that can
stretch a small input difference several-fold per iteration) and AdamW, whose first steps move
an element by about lr * g / (|g| + eps): where a gradient is a near-total cancellation
(|g| ~ eps = 1e-8) a 0.5 % change of g moves the weight by ~1e-6 per step. See the measured
values in each test module's docstring; PARAM_TOL = 2e-5 stays above all of them.
"""

from __future__ import annotations

import pytest
import torch

from _launch import logical

LOSS_TOL = 1e-5  # the bound for losses
GRAD_TOL = 1e-6
NORM_RTOL = 1e-5
PARAM_TOL = 2e-5


def max_param_diff(records, reference, run="run", part="final"):
    return max((logical(records, run, part, n) - ref).abs().max().item() for n, ref in reference[part].items())


def assert_matches_reference(records, reference, grads: bool = True):
    """Losses, grad norms, Newton-Schulz calls, initial and final weights and (``grads``) the
    step-0 gradients of ``records`` against the single process. ``grads=False`` where
    distributed Muon reduces gradients to their homes only, so no rank holds all of them."""
    for rec in records:
        run = rec["run"]
        for key in ("loss", "loss_video", "loss_action", "loss_time"):
            assert run[key] == pytest.approx(reference[key], abs=LOSS_TOL), key
        assert run["grad_norm"] == pytest.approx(reference["grad_norm"], rel=NORM_RTOL)
    # Newton-Schulz calls are per rank: the ranks of one data-parallel replica together make
    # the single process's calls (each stage orthogonalises its own matrices; TP peers all
    # orthogonalise every shared matrix)
    replica = {r["ctx"]["pp_rank"]: r["run"]["muon_ns_calls"] for r in records
               if r["ctx"]["dp_rank"] == 0 and r["ctx"]["tp_rank"] == 0}
    assert sum(replica.values()) == reference["muon_ns_calls"]
    assert all(r["run"]["muon_ns_calls"] == replica[r["ctx"]["pp_rank"]] for r in records)
    for name, ref in reference["init"].items():
        assert torch.equal(logical(records, "run", "init", name), ref), f"initial {name}"
    for name, ref in reference["grads0"].items() if grads else ():
        torch.testing.assert_close(logical(records, "run", "grads0", name), ref, rtol=0, atol=GRAD_TOL, msg=name)
    assert max_param_diff(records, reference) <= PARAM_TOL
    # and the comparison is not trivial: three steps moved the weights far beyond the tolerance
    moved = max((reference["final"][n] - reference["init"][n]).abs().max().item() for n in reference["init"])
    assert moved > 100 * PARAM_TOL
