"""Reduce-to-home and the return behind the next forward (``optim.muon_reduce=home``), on the
trainer's path: megatron DDP buffers, the public builder, gloo with 2-4 ranks.

The same seeded gradients as ``test_dist_muon`` (every data-parallel rank holds the whole-batch
gradient; DDP scales it by 1/dp and the reduction sums, exact at dp = 2), so the parameters must
equal single-process Muon bit for bit, as the ``all_reduce`` path's do: the home sums the two
data-parallel halves (a + b, as the all-reduce does) and every other operation is the one of
``test_dist_muon``. The global gradient norm is summed in another order than before, so it is
compared to rounding (``NORM_RTOL``), and so are parameters after clipping with it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
import _dist_muon_worker as worker  # noqa: E402

LAYOUTS = [(1, 2, 1), (2, 1, 1), (2, 2, 1), (1, 2, 2)]
NORM_RTOL = 1e-6  # fp32 sums of ~2,000 squares in another order: measured <= 6.3e-8
CLIP_ATOL = 1e-6  # one clip factor differing in its last bits moves weights ~1e-8 per step


def run(tmp_path_factory, name: str, tp: int = 1, dp: int = 1, pp: int = 1, **options) -> list[dict]:
    return worker.launch(tmp_path_factory.mktemp(name), tp * dp * pp, tp=tp, pp=pp, ddp=True, **options)


def assert_equal_params(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    bad = {n: (got[n] - want[n]).abs().max().item() for n in want if not torch.equal(got[n], want[n])}
    assert not bad, f"parameters differ from single-process Muon (max abs diff per name): {bad}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return worker.launch(tmp_path_factory.mktemp("reference"), 1, job="reference", save_at=5)[0]["run"]


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return {layout: run(tmp_path_factory, "home_{}{}{}".format(*layout), *layout) for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: "tp{}dp{}pp{}".format(*t))
def test_reduce_to_home_equals_single_process_muon(home, reference, layout):
    records = home[layout]
    assert all(r["run"]["home_reduce"] for r in records)
    assert_equal_params(worker.logical(records), reference["final"])
    moved = max((reference["final"][n] - reference["init"][n]).abs().max().item() for n in reference["init"])
    assert moved > 0.02
    total: dict[str, int] = {}
    for rec in records:
        for key, n in rec["run"]["ns_calls"].items():
            total[key] = total.get(key, 0) + n
    assert set(total.values()) == {worker.STEPS} and len(total) == 26  # once per matrix and step


@pytest.mark.parametrize("layout", [(1, 2, 1), (2, 2, 1)], ids=lambda t: "tp{}dp{}pp{}".format(*t))
def test_no_gradient_is_all_reduced_in_the_buffers(home, layout):
    """After DDP's bucket sync every buffer still holds the rank's own share (1/dp of the
    gradient): Muon matrices were reduced to their homes, AdamW parameters reduce-scattered
    into their ZeRO-1 shards, nothing all-reduced."""
    for rec in home[layout]:
        run_ = rec["run"]
        muon = set(run_["muon_names"])
        assert muon and len(run_["buffers"]) > len(muon)
        assert set(run_["buffers"].values()) == {"local"}, run_["buffers"]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: "tp{}dp{}pp{}".format(*t))
def test_global_norm_from_the_homes_equals_todays(tmp_path_factory, home, reference, layout):
    today = run(tmp_path_factory, "all_reduce_{}{}{}".format(*layout), *layout, reduce="all_reduce")
    assert not today[0]["run"]["home_reduce"]
    assert_equal_params(worker.logical(today), reference["final"])
    for rec, old in zip(home[layout], today):
        assert rec["run"]["norms"] == pytest.approx(old["run"]["norms"], rel=NORM_RTOL)
        assert rec["run"]["norms"] == pytest.approx(reference["norms"], rel=NORM_RTOL)


def test_clipping_by_the_homes_norm_matches_todays(tmp_path_factory, reference):
    """An active clip (norms ~45, clipped to 1): the homes scale their reduced matrices and
    every rank its AdamW gradients by the same factor as the all-reduce path does."""
    runs = {r: run(tmp_path_factory, f"clip_{r}", 2, 2, 1, reduce=r, grad_clip=1.0) for r in ("home", "all_reduce")}
    new, old = worker.logical(runs["home"]), worker.logical(runs["all_reduce"])
    assert min(runs["home"][0]["run"]["norms"]) > 10  # the clip was active at every step
    for name in old:
        torch.testing.assert_close(new[name], old[name], atol=CLIP_ATOL, rtol=0, msg=name)
    # and clipping changed the result: the comparison is not the unclipped run again
    assert max((old[n] - reference["final"][n]).abs().max().item() for n in old) > 100 * CLIP_ATOL


@pytest.mark.parametrize("reduce, want", [("home", 1.0), ("all_reduce", 1.5)])
def test_a_whole_muon_and_adamw_step_moves_the_all_reduce_bound_at_dp2(tmp_path_factory, reduce, want):
    """Bytes of one step (Muon to the homes and back, AdamW reduce-scattered and all-gathered,
    the norm's scalar), counted by wrapping the collectives, over 2 (N-1)/N x the rank's
    gradient bytes: the bound with reduce-to-home, 1.5x it on the all-reduce path (on average
    over the ranks: there the return of the updates follows the homes' balance). At DP2 with
    reduce-to-home every rank sends what it does not own and returns what it owns, whatever
    the homes' balance, so each rank is at the bound."""
    records = run(tmp_path_factory, f"bytes_{reduce}", 1, 2, 1, reduce=reduce, count_bytes=True)
    ratios = [(r["run"]["bytes"]["sent"] / r["run"]["bytes"]["grad"],
               r["run"]["bytes"]["received"] / r["run"]["bytes"]["grad"]) for r in records]
    for sent, received in ratios if reduce == "home" else []:
        assert sent == pytest.approx(want, abs=0.002) and received == pytest.approx(want, abs=0.002), ratios
    mean = [sum(r[i] for r in ratios) / len(ratios) for i in (0, 1)]
    assert mean == pytest.approx([want, want], abs=0.002), ratios  # measured 1.00007 (the norm's scalar), 1.5


def test_updates_land_before_the_forward_of_their_module(home):
    """After a step the updates are still in flight; a module's forward lands its own (the
    pre-hook), leaves the others in flight, and equals what landing everything gives."""
    for rec in home[(2, 2, 1)]:
        run_ = rec["run"]
        probe = run_["probe"]
        assert probe in run_["in_flight"] and len(run_["in_flight"]) == 18
        assert probe not in run_["in_flight_after_forward"]
        assert run_["in_flight_after_forward"]  # only the probe's bucket landed
        assert run_["forward_changed_weight"] and run_["forward_landed_all"]


def _save(tmp_path_factory, name, tp, dp, pp) -> Path:
    folder = tmp_path_factory.mktemp(name)
    records = worker.launch(folder, tp * dp * pp, tp=tp, pp=pp, ddp=True, end=5, save=str(folder))
    torch.save(worker.logical(records), folder / "model.pt")
    return folder


@pytest.mark.parametrize("saved, resumed", [((2, 2, 1), (1, 2, 1)), ((1, 2, 1), (2, 1, 1))],
                         ids=["tp2dp2-to-dp2", "dp2-to-tp2"])
def test_resume_from_a_checkpoint_on_the_new_path(tmp_path_factory, reference, saved, resumed):
    folder = _save(tmp_path_factory, "save_{}{}{}".format(*saved), *saved)
    state = torch.load(folder / "optim.pt", weights_only=False)
    want = reference["state_at_save"]
    for key, s in want["optimizers"]["muon"]["state"].items():
        assert torch.equal(state["optimizers"]["muon"]["state"][key]["momentum_buffer"], s["momentum_buffer"])
    assert_equal_params(torch.load(folder / "model.pt"), reference["at_save"])
    records = worker.launch(tmp_path_factory.mktemp("resume"), resumed[0] * resumed[1] * resumed[2], tp=resumed[0],
                            pp=resumed[2], ddp=True, start=5, load=str(folder))
    assert_equal_params(worker.logical(records), reference["final"])


@pytest.mark.parametrize("layout", [(1, 2, 1), (2, 2, 1)], ids=lambda t: "tp{}dp{}pp{}".format(*t))
def test_overlapped_backward_reduces_to_home_bit_for_bit(tmp_path_factory, layout):
    """Real forward and backward, each data-parallel rank on its own tokens, megatron DDP
    reducing each bucket as backward finishes it: the reductions to the homes start during
    backward (from the second step on; megatron's first step learns the buckets), and the
    weights equal those of the all-reduce path bit for bit (at dp = 2 both sum a + b)."""
    tp, dp, pp = layout
    records = worker.launch(tmp_path_factory.mktemp("overlapped_{}{}{}".format(*layout)), tp * dp, tp=tp,
                            job="overlapped")
    for rec in records:
        home, old = rec["run"]["home"], rec["run"]["all_reduce"]
        assert home["groups"] > 1
        assert home["issued_in_backward"][0] == 0 and all(n == home["groups"] for n in home["issued_in_backward"][1:])
        assert_equal_params(home["final"], old["final"])
        assert max((home["final"][n] - home["init"][n]).abs().max().item() for n in home["init"]) > 0.01
