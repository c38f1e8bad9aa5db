"""Distributed Muon (owner and gather modes) against single-process Muon, on gloo with 4 ranks.

Layouts (tp, dp, pp) in {(1,4,1), (2,2,1), (2,1,2), (1,2,2)}; real megatron modules built at the
TP size (grouped-query fused QKV, fused cross-attention KV, gated fc1 with stride 2, odd-sized
column/row-parallel and replicated weights); 10 steps on seeded gradients (see
``_dist_muon_worker``). The single-process reference is ``ReplicatedOptimizerSet`` with Muon splitting the
same fused weights into Q, K, V / gate, up / K, V.

Why equality is exact (``torch.equal``, fp32 on CPU): the distributed step performs the same
floating-point operations on the same values as the reference. Momentum, Nesterov look-ahead,
weight decay and the scaled update are elementwise, so doing them on a slice or after moving
bytes between ranks changes no bit; the learning rates come from the same schedule; the
tensor-parallel pieces are joined by concatenation (no arithmetic); and Newton-Schulz of a stack
of same-shape matrices gives, on this CPU backend, bit for bit the result of one matrix at a
time (checked in ``test_dist_muon_units``). Nothing is summed in another order, which is what
made the TP/DP equivalence tests of the whole model need tolerances. Only the gradient norm is
a reduction across ranks; it is compared with a tolerance and not used (clipping off).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
import _dist_muon_worker as worker  # noqa: E402

from wallwm_pretrain.optim.schedule import lr_factor  # noqa: E402


LAYOUTS = [(1, 4, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2)]
FUSED = {
    f"block{i}.{name}" for i in (0, 1) for name in ("self_attn.linear_qkv.weight", "cross_attn.linear_kv.weight", "ffn.linear_fc1.weight")
}
CONTROL_MIN = 1e-3  # the per-shard control must move some weight at least this far
NORM_RTOL = 1e-6


def run(tmp_path_factory, name: str, tp: int = 1, dp: int = 1, pp: int = 1, **options) -> list[dict]:
    return worker.launch(tmp_path_factory.mktemp(name), tp * dp * pp, tp=tp, pp=pp, **options)


@pytest.fixture(scope="module")
def muon_reference(tmp_path_factory):
    return run(tmp_path_factory, "reference", job="reference", save_at=5)[0]["run"]


@pytest.fixture(scope="module")
def reference_unsplit(tmp_path_factory):
    return run(tmp_path_factory, "reference_unsplit", job="reference", split_fused=False)[0]["run"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every layout in owner and gather mode (cached for the tests below)."""
    out = {}
    for layout in LAYOUTS:
        tp, dp, pp = layout
        for mode in ("owner", "gather"):
            out[layout, mode] = run(tmp_path_factory, f"{mode}_{tp}{dp}{pp}", tp, dp, pp, mode=mode)
    return out


def logical_keys(muon_reference: dict) -> set[str]:
    """Labels of the logical matrices of the reference model (fused weights split)."""
    keys = set()
    for name, p in muon_reference["init"].items():
        if p.ndim != 2 or name == "emb.weight":
            continue
        labels = muon_reference["fused_rows"].get(name, (None,))[0]
        keys |= {f"{name}[{label}]" for label in labels} if labels else {name}
    return keys


def assert_equal_params(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    bad = {n: (got[n] - want[n]).abs().max().item() for n in want if not torch.equal(got[n], want[n])}
    assert not bad, f"parameters differ from single-process Muon (max abs diff per name): {bad}"


def test_reference_splits_the_fused_weights(muon_reference, reference_unsplit):
    assert set(muon_reference["fused"]) == FUSED
    qkv = muon_reference["fused_rows"]["block0.self_attn.linear_qkv.weight"]
    assert qkv == (("q", "k", "v"), (12, 6, 6), 2)  # 4 heads of 6 in 2 groups: [q q k v] per group
    assert muon_reference["fused_rows"]["block0.ffn.linear_fc1.weight"] == (("gate", "up"), (36, 36), 1)
    # per block: Q, K, V, proj; q, K, V, proj; gate, up, fc2 (11); plus 4 odd-sized weights
    assert len(logical_keys(muon_reference)) == 26
    assert muon_reference["ns_calls"] == worker.STEPS * 26
    # the split is a real semantic change: the unsplit reference ends elsewhere
    diff = max((muon_reference["final"][n] - reference_unsplit["final"][n]).abs().max().item() for n in FUSED)
    assert diff > CONTROL_MIN


@pytest.mark.parametrize("mode", ["owner", "gather"])
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: "tp{}dp{}pp{}".format(*t))
def test_parameters_equal_single_process_muon(runs, muon_reference, layout, mode):
    records = runs[layout, mode]
    assert_equal_params(worker.logical(records, "init"), muon_reference["init"])
    assert_equal_params(worker.logical(records), muon_reference["final"])
    moved = max((muon_reference["final"][n] - muon_reference["init"][n]).abs().max().item() for n in muon_reference["init"])
    assert moved > 0.02  # ten steps moved weights of size ~0.1 visibly: the comparison is not trivial
    # data-parallel replicas hold identical bits
    for rec in records:
        twin = next(r for r in records if r["ctx"]["dp_rank"] == 0 and r["ctx"]["tp_rank"] == rec["ctx"]["tp_rank"]
                    and r["ctx"]["pp_rank"] == rec["ctx"]["pp_rank"])
        for name, value in rec["run"]["final"].items():
            assert torch.equal(value, twin["run"]["final"][name]), name


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: "tp{}dp{}pp{}".format(*t))
def test_owner_mode_orthogonalises_each_matrix_once_per_step(runs, muon_reference, layout):
    records = runs[layout, "owner"]
    total: dict[str, int] = {}
    for rec in records:
        for key, n in rec["run"]["ns_calls"].items():
            total[key] = total.get(key, 0) + n
            assert rec["run"]["plan"][key] == rec["run"]["stage_rank"], f"{key} orthogonalised off its home"
    assert set(total) == logical_keys(muon_reference)
    assert set(total.values()) == {worker.STEPS}, total
    # same-shape matrices on one home went through stacked calls (and stayed bit-exact)
    assert sum(rec["run"]["ns_batched"] for rec in records) > 0


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: "tp{}dp{}pp{}".format(*t))
def test_gather_mode_repeats_newton_schulz_on_every_rank(runs, layout):
    tp, dp, _ = layout
    for rec in runs[layout, "gather"]:
        assert set(rec["run"]["ns_calls"].values()) == {worker.STEPS}
    counts: dict[str, int] = {}
    for rec in runs[layout, "gather"]:
        for key, n in rec["run"]["ns_calls"].items():
            counts[key] = counts.get(key, 0) + n
    assert set(counts.values()) == {worker.STEPS * tp * dp}


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda t: "tp{}dp{}pp{}".format(*t))
def test_grad_norm_is_the_logical_models(runs, muon_reference, layout):
    for rec in runs[layout, "owner"]:
        assert rec["run"]["norms"] == pytest.approx(muon_reference["norms"], rel=NORM_RTOL)


def test_owner_state_is_one_copy_spread_over_the_stage(runs, muon_reference):
    """Momentum: exactly one copy of each logical matrix per stage, ~1/(DP*TP) per rank.
    AdamW: each data-parallel rank holds ceil(N/dp) of each group's N elements (x2 moments)."""
    matrices = {n: p.numel() for n, p in muon_reference["init"].items() if p.ndim == 2 and n != "emb.weight"}
    for layout in LAYOUTS:
        tp, dp, pp = layout
        records = runs[layout, "owner"]
        for stage in range(pp):
            ranks = [r for r in records if r["ctx"]["pp_rank"] == stage]
            names = ranks[0]["run"]["init"].keys()
            stage_total = sum(v for n, v in matrices.items() if n in names)
            held = [r["run"]["state_numel"]["muon"] for r in ranks]
            assert sum(held) == stage_total, (layout, stage, held)
            # LPT balances flops; with these few small matrices no rank holds more than twice
            # an even share (measured: at most 1.6x)
            assert max(held) <= 2 * stage_total / (tp * dp), (layout, stage, held)
        # gather mode keeps momentum per local piece: replicated over DP (and over TP for
        # matrices that TP does not split)
        layouts = {n: lay for r in records for n, lay in r["run"]["layout"].items()}
        replicated = dp * sum(v * (1 if layouts[n]["sharded"] else tp) for n, v in matrices.items())
        assert sum(r["run"]["state_numel"]["muon"] for r in runs[layout, "gather"]) == replicated


def test_per_shard_orthogonalisation_is_measurably_wrong(tmp_path_factory, runs, muon_reference):
    """Negative control: each rank orthogonalises its own TP pieces (mode ``local``)."""
    records = run(tmp_path_factory, "local_221", 2, 2, 1, mode="local")
    got = worker.logical(records)
    wrong = max((got[n] - muon_reference["final"][n]).abs().max().item() for n in muon_reference["final"])
    assert wrong > CONTROL_MIN
    # at TP1 the pieces are the matrices: the same mode is then exactly right
    dp_only = worker.logical(run(tmp_path_factory, "local_141", 1, 4, 1, mode="local"))
    assert_equal_params(dp_only, muon_reference["final"])


def test_unsplit_fused_weights_match_todays_tp_gathered_muon(tmp_path_factory, reference_unsplit):
    """``split_fused=False``: fused weights orthogonalised whole, megatron's stride undone."""
    for mode in ("gather", "owner"):
        records = run(tmp_path_factory, f"unsplit_{mode}", 2, 2, 1, mode=mode, split_fused=False)
        assert_equal_params(worker.logical(records), reference_unsplit["final"])


def test_the_builder_on_megatron_ddp_buffers_matches(tmp_path_factory, muon_reference):
    """``build_optimizer`` on a megatron-DDP-wrapped model: gradients in ``main_grad``,
    DDP's own reduction (exact at dp = 2), fused layouts found on the modules."""
    records = run(tmp_path_factory, "ddp_221", 2, 2, 1, mode="owner", ddp=True)
    assert_equal_params(worker.logical(records), muon_reference["final"])
    assert sum(sum(r["run"]["ns_calls"].values()) for r in records) == worker.STEPS * 26


def test_bucketing_and_overlap_do_not_change_a_bit(tmp_path_factory, muon_reference):
    records = run(tmp_path_factory, "one_bucket", 2, 2, 1, mode="owner", bucket_elems=10**9, overlap=False)
    assert records[0]["run"]["buckets"] == 1
    assert_equal_params(worker.logical(records), muon_reference["final"])


def _parts(name: str, t: torch.Tensor, rows: dict) -> dict[str, torch.Tensor]:
    """Logical matrices of a whole weight, cut here from the recorded row layout."""
    if name not in rows:
        return {name: t}
    labels, sizes, groups = rows[name]
    blocks = t.view(groups, sum(sizes), t.size(1))
    out, start = {}, 0
    for label, size in zip(labels, sizes):
        out[f"{name}[{label}]"] = blocks[:, start : start + size].reshape(-1, t.size(1))
        start += size
    return out


def test_first_update_is_orthogonalised_within_the_quintic_band(runs, muon_reference):
    """Step 0 of owner mode at TP2 x DP2: the update of every logical matrix is
    0.2 sqrt(max side) * NewtonSchulz(G0); its singular values are the 5-step quintic map
    p(s) = 3.4445 s - 4.7750 s^3 + 2.0315 s^5 of G0's normalised singular values, inside the
    band [0.6818, 1.1344] where those are all >= 0.01 (below 0.01 the map can overshoot to
    1.2024, its maximum), and its RMS is about 0.2 lr."""
    records = runs[(2, 2, 1), "owner"]
    before, after = worker.logical(records, "init"), worker.logical(records, "after_first")
    lr = worker.OPTIM.lr * lr_factor(0, worker.OPTIM.warmup_steps, worker.STEPS, worker.OPTIM.min_lr_ratio)
    decay = 1 - lr * worker.OPTIM.weight_decay
    rows, checked, in_band = muon_reference["fused_rows"], 0, 0
    for name in (n for n, p in before.items() if p.ndim == 2 and n != "emb.weight"):
        g0 = worker.drawn(name, tuple(before[name].shape), 0).double()
        step = (before[name].double() * decay - after[name].double()) / lr
        for key, update in _parts(name, step, rows).items():
            grad = _parts(name, g0, rows)[key]
            scale = 0.2 * math.sqrt(max(update.shape))
            sv = torch.linalg.svdvals(update / scale)
            s = torch.linalg.svdvals(grad) / grad.norm()
            for _ in range(5):
                s = 3.4445 * s - 4.7750 * s**3 + 2.0315 * s**5
            torch.testing.assert_close(sv, s.sort(descending=True).values, atol=2e-4, rtol=0, msg=key)
            assert sv.max() <= 1.2025, key  # max of p on [0, 1.21], whatever the input
            rms = update.pow(2).mean().sqrt().item()
            # min(m, n) singular values: RMS = scale * sqrt(sum sv^2 / (m n)) = 0.2 * RMS(sv)
            assert rms == pytest.approx(0.2 * sv.pow(2).mean().sqrt().item(), rel=1e-3)
            if (torch.linalg.svdvals(grad) / grad.norm()).min() >= 0.01:
                assert 0.6818 - 2e-4 <= sv.min() and sv.max() <= 1.1344 + 2e-4, key
                assert 0.2 * 0.6818 - 1e-3 <= rms <= 0.2 * 1.1344 + 1e-3, key
                in_band += 1
            checked += 1
    assert checked == len(logical_keys(muon_reference)) and in_band >= checked // 2


# -- checkpoints across layouts --------------------------------------------------------------
def _save(tmp_path_factory, name, tp, dp, pp, mode="owner") -> Path:
    folder = tmp_path_factory.mktemp(name)
    records = worker.launch(folder, tp * dp * pp, tp=tp, pp=pp, mode=mode, end=5, save=str(folder))
    torch.save(worker.logical(records), folder / "model.pt")
    return folder


def _resume(tmp_path_factory, name, folder, tp, dp, pp, mode="owner", job=None) -> dict:
    options = dict(mode=mode, start=5, load=str(folder))
    if job:
        options["job"] = job
    records = worker.launch(tmp_path_factory.mktemp(name), tp * dp * pp, tp=tp, pp=pp, **options)
    return worker.logical(records) if job is None else records[0]["run"]["final"]


def _assert_same_state(got, want, path="state"):
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor) and torch.equal(got, want), path
    elif isinstance(want, dict):
        assert set(got) == set(want), f"{path}: keys {sorted(got)} vs {sorted(want)}"
        for k in want:
            _assert_same_state(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (a, b) in enumerate(zip(got, want)):
            _assert_same_state(a, b, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} vs {want!r}"


def test_dp4_checkpoint_resumes_at_dp2(tmp_path_factory, muon_reference):
    folder = _save(tmp_path_factory, "save_dp4", 1, 4, 1)
    # the merged state is exactly what single-process Muon + AdamW hold after 5 steps
    _assert_same_state(torch.load(folder / "optim.pt", weights_only=False), muon_reference["state_at_save"])
    assert_equal_params(_resume(tmp_path_factory, "resume_dp2", folder, 1, 2, 1), muon_reference["final"])


def test_tp2_checkpoint_resumes_at_tp1_and_in_a_single_process(tmp_path_factory, muon_reference):
    folder = _save(tmp_path_factory, "save_tp2", 2, 1, 1)
    _assert_same_state(torch.load(folder / "optim.pt", weights_only=False), muon_reference["state_at_save"])
    assert_equal_params(_resume(tmp_path_factory, "resume_tp1", folder, 1, 1, 1), muon_reference["final"])
    # the plain single-process ReplicatedOptimizerSet loads it too
    assert_equal_params(_resume(tmp_path_factory, "resume_single", folder, 1, 1, 1, job="reference"), muon_reference["final"])


def test_pipeline_gather_checkpoint_resumes_in_owner_mode_at_dp4(tmp_path_factory, muon_reference):
    folder = _save(tmp_path_factory, "save_tp2pp2", 2, 1, 2, mode="gather")
    _assert_same_state(torch.load(folder / "optim.pt", weights_only=False), muon_reference["state_at_save"])
    assert_equal_params(_resume(tmp_path_factory, "resume_dp4", folder, 1, 4, 1, mode="owner"), muon_reference["final"])
