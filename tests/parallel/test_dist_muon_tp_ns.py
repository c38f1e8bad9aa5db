"""Newton-Schulz on tensor-parallel pieces (``optim.muon_tp_ns=sharded|sharded_all``) against
single-process Muon, on the trainer's path (megatron DDP buffers, reduce-to-home) and on the
all-reduce path, gloo with 2-4 ranks, including resume from a canonical checkpoint.

The sharded iteration sums partial Gram matrices over TP and evaluates the quintic through the
Gram form, so it equals single-process Muon to fp32 rounding, not bit for bit: parameters are
compared within ``PARAM_ATOL`` after 10 steps (the weights move by more than 0.02, so the
tolerance is far below what a wrong piece would give), momentum within ``MOMENTUM_ATOL``.
``sharded_all`` keeps every TP-split matrix in pieces (the worker's model has odd, fused and
stride-2 matrices); ``sharded`` only those whose long side exceeds tp x the short one.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
import _dist_muon_worker as worker  # noqa: E402

from wallwm_pretrain.optim.distributed.sharded_ns import keeps_pieces, sharded_ns_saves_bytes  # noqa: E402

PARAM_ATOL = 5e-6  # measured max |diff| 9.2e-7 over 10 steps (sharded_all, lr 0.02, fp32); weights move > 0.02
MOMENTUM_ATOL = 1e-6  # momentum is elementwise on the same gradients: equal up to the sum order of DP


def run(tmp_path_factory, name: str, tp: int, dp: int, **options) -> list[dict]:
    return worker.launch(tmp_path_factory.mktemp(name), tp * dp, tp=tp, ddp=True, **options)


def assert_close_params(got: dict, want: dict, atol: float = PARAM_ATOL) -> float:
    assert got.keys() == want.keys()
    worst = 0.0
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=atol, rtol=0, msg=name)
        worst = max(worst, (got[name] - want[name]).abs().max().item())
    return worst


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return worker.launch(tmp_path_factory.mktemp("reference"), 1, job="reference", save_at=5)[0]["run"]


def test_which_matrices_stay_in_pieces():
    assert sharded_ns_saves_bytes(2048, 256, 0, 2) and sharded_ns_saves_bytes(256, 1024, 1, 2)
    assert not sharded_ns_saves_bytes(256, 256, 0, 2)  # square: the Gram all-reduce costs more
    assert not sharded_ns_saves_bytes(768, 256, 1, 2)  # split along the short side
    assert not sharded_ns_saves_bytes(2048, 256, None, 2) and not sharded_ns_saves_bytes(2048, 256, 0, 1)
    assert keeps_pieces("sharded_all", 256, 256, 0, 2) and not keeps_pieces("gather", 2048, 256, 0, 2)


@pytest.mark.parametrize("tp_ns", ["sharded_all", "sharded"])
@pytest.mark.parametrize("layout", [(2, 1), (2, 2)], ids=["tp2", "tp2dp2"])
def test_sharded_newton_schulz_equals_single_process_muon(tmp_path_factory, reference, layout, tp_ns):
    tp, dp = layout
    records = run(tmp_path_factory, f"{tp_ns}_tp{tp}dp{dp}", tp, dp, tp_ns=tp_ns)
    keys = records[0]["run"]["sharded_keys"]
    if tp_ns == "sharded_all":
        assert len(keys) == 25  # every TP-split logical matrix of the worker's model (all but odd.rep)
    else:
        assert keys == ["odd.tall.weight"]  # 34 x 5 split along its rows: 34 > 2 x 5
    total: dict[str, int] = {}
    for rec in records:
        for key, n in rec["run"]["ns_calls"].items():
            total[key] = total.get(key, 0) + n
    # a matrix kept in pieces is orthogonalised by its tp ranks together, the others by one home
    assert {k: n for k, n in total.items() if k in keys} == {k: tp * worker.STEPS for k in keys}
    assert set(n for k, n in total.items() if k not in keys) == {worker.STEPS}
    got = worker.logical(records)
    assert_close_params(got, reference["final"])
    moved = max((reference["final"][n] - reference["init"][n]).abs().max().item() for n in reference["init"])
    assert moved > 0.02


def test_sharded_on_the_all_reduce_path(tmp_path_factory, reference):
    records = run(tmp_path_factory, "all_reduce_sharded", 2, 2, tp_ns="sharded_all", reduce="all_reduce")
    assert not records[0]["run"]["home_reduce"] and len(records[0]["run"]["sharded_keys"]) == 25
    assert_close_params(worker.logical(records), reference["final"])


def test_clipping_with_gradients_in_pieces(tmp_path_factory):
    """An active clip: the global norm counts each piece kept on its TP rank once, so the result
    matches the gather path's clipped run to rounding."""
    runs = {ns: run(tmp_path_factory, f"clip_{ns}", 2, 2, tp_ns=ns, grad_clip=1.0) for ns in ("gather", "sharded_all")}
    assert min(runs["sharded_all"][0]["run"]["norms"]) > 10  # the clip was active at every step
    for rec, old in zip(runs["sharded_all"], runs["gather"]):
        assert rec["run"]["norms"] == pytest.approx(old["run"]["norms"], rel=1e-6)
    assert_close_params(worker.logical(runs["sharded_all"]), worker.logical(runs["gather"]))


def test_resume_with_momentum_in_pieces(tmp_path_factory, reference):
    """Save at step 5 from TP2 x DP2 with every split matrix in pieces: the canonical momentum
    is the single-process one; resume at TP2 (pieces again) and at DP2 (no TP, gather)."""
    folder = tmp_path_factory.mktemp("save_sharded")
    records = worker.launch(folder, 4, tp=2, ddp=True, end=5, save=str(folder), tp_ns="sharded_all")
    torch.save(worker.logical(records), folder / "model.pt")
    state = torch.load(folder / "optim.pt", weights_only=False)
    want = reference["state_at_save"]["optimizers"]["muon"]["state"]
    assert state["optimizers"]["muon"]["state"].keys() == want.keys()
    for key, s in want.items():
        torch.testing.assert_close(state["optimizers"]["muon"]["state"][key]["momentum_buffer"],
                                   s["momentum_buffer"], atol=MOMENTUM_ATOL, rtol=0)
    assert_close_params(torch.load(folder / "model.pt"), reference["at_save"])
    for tp, dp in [(2, 1), (1, 2)]:
        again = worker.launch(tmp_path_factory.mktemp(f"resume_tp{tp}dp{dp}"), tp * dp, tp=tp, ddp=True,
                              start=5, load=str(folder), tp_ns="sharded_all")
        assert_close_params(worker.logical(again), reference["final"])
