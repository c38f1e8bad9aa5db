"""Context parallelism (Ulysses) against one process, on gloo, fp32: the small and the Wan towers.

Every sample's 27 video tokens and 9 action tokens (``_equivalence_worker.CP_CFG``: neither
divisible by 2 or 4, so every split pads) are split over the context-parallel ranks; the
batch has unequal event lengths and caption padding. Each layout (CP2, CP4, CP2 x TP2,
CP2 x DP2, CP2 x PP2, CP2 x PP2 interleaved, CP2 with recompute) trains three steps through
the trainer's path (megatron's schedule, DDP over DP x CP) and must match the single process:
losses, every step-0 gradient, the grad norms and the weights after three Muon + AdamW steps
(tolerances of ``_reference.py``); owner-mode distributed Muon, whose homes spread over
DP x CP, against the replicated optimizer with the same fused-weight split. Context-parallel
peers must end bit-identical (they hold the same weights).

The Wan tower (tests/model/_wan_wallwm_tiny.py, two views of 1 x 3 patches per latent frame: 9
video tokens per view, 9 action tokens, per-token timesteps): its self-attention, the
cross-view attention (grouped by latent frame after the exchange) and the coupling over both
views' pieces, at CP2 and at CP2 x TP2 on unified-mode windows with a history latent frame.

Negative controls: the same CP2 run with the all-to-all replaced by a no-op, or its received
chunks swapped, is far from the single process.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
from _launch import _CTX, launch, run_ranks  # noqa: E402
from _reference import LOSS_TOL, assert_matches_reference  # noqa: E402

CP = dict(pipeline=True, cp_data=True)


def first_cp_rank(records: list[dict]) -> list[dict]:
    """The ranks of context-parallel rank 0 (one copy of every TP slice per DP rank)."""
    return [r for r in records if r["ctx"]["cp_rank"] == 0]


def assert_cp_peers_identical(records: list[dict], parts=("grads0", "final")) -> None:
    """Context-parallel peers (same TP, PP and DP rank) hold bit-identical reduced gradients and weights."""
    peers: dict[tuple, list[dict]] = {}
    for r in records:
        peers.setdefault((r["ctx"]["tp_rank"], r["ctx"]["pp_rank"], r["ctx"]["dp_rank"]), []).append(r)
    assert all(len(group) == records[0]["ctx"]["cp"] for group in peers.values())
    for group in peers.values():
        first = group[0]["run"]
        for other in group[1:]:
            for part in parts:
                for name, value in first[part].items():
                    assert torch.equal(other["run"][part][name], value), f"{part} {name}"


@pytest.fixture(scope="module")
def cp_reference(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("cp_ref"), world=1, tp=1, **CP)[0]["run"]


@pytest.fixture(scope="module")
def cp_owner_reference(tmp_path_factory):
    """One process, distributed Muon's math (fused weights split) with every home on rank 0, five steps."""
    return launch(tmp_path_factory.mktemp("cp_ref_owner"), world=1, tp=1, muon_mode="owner", steps=5, **CP)[0]["run"]


def test_cp2_matches_single_process(tmp_path, cp_reference):
    records = launch(tmp_path, world=2, tp=1, cp=2, **CP)
    assert sorted(r["ctx"]["cp_rank"] for r in records) == [0, 1]
    assert all(r["ctx"]["dp"] == 1 for r in records)
    assert_matches_reference(first_cp_rank(records), cp_reference)
    assert_cp_peers_identical(records)


def test_cp2_tp2_matches_single_process(tmp_path, cp_reference):
    records = launch(tmp_path, world=4, tp=2, cp=2, **CP)
    assert sorted((r["ctx"]["tp_rank"], r["ctx"]["cp_rank"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert_matches_reference(first_cp_rank(records), cp_reference)
    assert_cp_peers_identical(records)


def test_cp2_dp2_matches_single_process(tmp_path, cp_reference):
    records = launch(tmp_path, world=4, tp=1, cp=2, **CP)
    assert sorted((r["ctx"]["dp_rank"], r["ctx"]["cp_rank"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert_matches_reference(first_cp_rank(records), cp_reference)
    assert_cp_peers_identical(records)


def test_cp4_matches_single_process(tmp_path, cp_reference):
    """One head per rank; the 9 action tokens pad to 12, so rank 3 holds only padding action tokens."""
    records = launch(tmp_path, world=4, tp=1, cp=4, **CP)
    assert sorted(r["ctx"]["cp_rank"] for r in records) == [0, 1, 2, 3]
    assert_matches_reference(first_cp_rank(records), cp_reference)
    assert_cp_peers_identical(records)


def test_cp2_pp2_matches_single_process(tmp_path, cp_reference):
    """Pipeline ranks pass this CP rank's pieces of the streams (megatron's p2p shapes divide by cp)."""
    records = launch(tmp_path, world=4, tp=1, cp=2, pp=2, **CP)
    assert sorted((r["ctx"]["pp_rank"], r["ctx"]["cp_rank"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert_matches_reference(first_cp_rank(records), cp_reference)
    assert_cp_peers_identical(records)


def test_cp2_pp2_interleaved_matches_single_process(tmp_path):
    """vpp = 2 over 4 coupled layers, 2 microbatches: the interleaved schedule's p2p shapes too."""
    reference = launch(tmp_path / "ref", world=1, tp=1, num_layers=4, **CP)[0]["run"]
    records = launch(tmp_path / "vpp", world=4, tp=1, cp=2, pp=2, vpp=2, microbatches=2, num_layers=4, **CP)
    assert_matches_reference(first_cp_rank(records), reference)
    assert_cp_peers_identical(records)


def test_cp2_owner_muon_matches_single_process(tmp_path, cp_owner_reference):
    """Distributed Muon in owner mode, five steps: each matrix has one home among the DP x CP
    ranks, which orthogonalises it; the updates come back to both CP ranks."""
    records = launch(tmp_path, world=2, tp=1, cp=2, muon_mode="owner", steps=5, **CP)
    calls = [r["run"]["muon_ns_calls"] for r in records]  # Newton-Schulz calls by matrix shape
    assert all(calls), f"every CP rank is home to some matrices: {calls}"
    assert sum(calls, Counter()) == cp_owner_reference["muon_ns_calls"]  # each matrix orthogonalised once
    # assert_matches_reference counts a replica's calls as one number: the CP ranks' together
    first = first_cp_rank(records)
    first[0]["run"]["muon_ns_calls"] = sum(sum(c.values()) for c in calls)
    reference = dict(cp_owner_reference, muon_ns_calls=sum(cp_owner_reference["muon_ns_calls"].values()))
    assert_matches_reference(first, reference, grads=False)  # reduced to their homes, not everywhere
    assert_cp_peers_identical(records, parts=("final",))


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_cp2_with_recompute_matches_single_process(tmp_path, cp_reference, recompute):
    """Recomputed cores (selective) and layers (full) redo the exchange in backward."""
    records = launch(tmp_path, world=2, tp=1, cp=2, recompute=recompute, **CP)
    assert_matches_reference(first_cp_rank(records), cp_reference)


WAN = dict(CP, wan=True)


def test_wan_cp2_matches_single_process(tmp_path):
    reference = launch(tmp_path / "ref", world=1, tp=1, **WAN)[0]["run"]
    records = launch(tmp_path / "cp2", world=2, tp=1, cp=2, **WAN)
    assert_matches_reference(first_cp_rank(records), reference)
    assert_cp_peers_identical(records)
    moved = reference["final"]["video.blocks.0.cross_view.attention.linear_proj.weight"].abs().max()
    assert moved > 1e-3  # the zero-initialised cross-view output moved: its attention counted in steps 2 and 3


def test_wan_cp2_tp2_with_history_matches_single_process(tmp_path):
    reference = launch(tmp_path / "ref", world=1, tp=1, history=1, **WAN)[0]["run"]
    records = launch(tmp_path / "cp2tp2", world=4, tp=2, cp=2, history=1, **WAN)
    assert_matches_reference(first_cp_rank(records), reference)
    assert_cp_peers_identical(records)


def test_checkpoint_saved_at_cp2_tp2_resumes_at_cp1_and_cp4(tmp_path):
    """The canonical checkpoint holds whole tensors, whatever the CP split: saved after three
    steps at CP2 x TP2, it resumes at CP1 and at CP4 with the next loss the saving run had."""
    saved = launch(tmp_path / "save", world=4, tp=2, cp=2, save=True, **CP)
    state = torch.load(tmp_path / "save" / "canonical.pt", weights_only=False)
    assert state["step"] == 3 and "layers.0.video.self_attn.linear_qkv.weight" in state["model"]
    after = saved[0]["run"]["after_loss"]
    assert all(r["run"]["after_loss"] == after for r in saved)
    for world, cp in ((1, 1), (4, 4)):
        resumed = launch(tmp_path / f"cp{cp}", world=world, tp=1, cp=cp, steps=1,
                         load=str(tmp_path / "save" / "canonical.pt"), **CP)
        assert resumed[0]["run"]["loss"][0] == pytest.approx(after, abs=LOSS_TOL), f"cp={cp}"


def test_sharded_checkpoint_at_cp2_tp2_writes_each_weight_once_and_resumes_at_tp1(tmp_path):
    """Rank pieces (owner-mode Muon, ZeRO-1 AdamW over DP x CP): context-parallel peers hold the
    same weights and only the first writes them; loaded at TP1 the canonical state is the saved one."""
    import _sharded_worker as sharded_worker
    from safetensors import safe_open

    from wallwm_pretrain.checkpoint import find_latest

    def run(folder, world, tp, **options):
        procs = [_CTX.Process(target=sharded_worker.run_rank, args=(r, world, tp, 1, str(folder / "rdzv"), str(folder), options))
                 for r in range(world)]
        run_ranks(procs, f"sharded checkpoint, world {world}")
        return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]

    (tmp_path / "save").mkdir()
    saved = run(tmp_path / "save", 4, 2, mode="save", cp=2, **{"async": False})
    folder = find_latest(tmp_path / "save" / "sync")
    writers: dict[str, list[str]] = {}  # model piece "name@offsets" -> the files that hold it
    for f in sorted(folder.glob("rank*.safetensors")):
        with safe_open(str(f), "pt") as fh:
            for key in fh.keys():
                if not key.startswith("optim/"):
                    writers.setdefault(key, []).append(f.name)
    assert {k.split("@")[0] for k in writers} >= set(saved[0]["canonical"]["model"]) - {
        n for n in saved[0]["canonical"]["model"] if n.endswith("_extra_state")}
    twice = {k: files for k, files in writers.items() if len(files) > 1}
    assert not twice, f"written by several ranks: {list(twice.items())[:3]}"
    (tmp_path / "load").mkdir()
    loaded = run(tmp_path / "load", 1, 1, mode="load", path=str(folder))
    from test_sharded_checkpoint import assert_equal_state

    assert_equal_state(loaded[0]["canonical"], saved[0]["canonical"])


@pytest.mark.parametrize("how", ["noop", "swap"])
def test_broken_exchange_is_far_from_single_process(tmp_path, cp_reference, how):
    """Negative control: without the right all-to-all the CP2 losses are not the single process's."""
    records = launch(tmp_path, world=2, tp=1, cp=2, break_exchange=how, **CP)
    wrong = max(abs(a - b) for a, b in zip(records[0]["run"]["loss"], cp_reference["loss"]))
    assert wrong > 100 * LOSS_TOL


def test_trainer_at_cp2_trains_the_single_process_run(tmp_path, shard_writer):
    """``python -m wallwm_pretrain.train`` under torchrun with ``parallel.cp=2`` (real shards,
    loader, loop, checkpoint) follows the single-process run's losses."""
    from test_launchers import LENGTHS, losses, train

    from wallwm_pretrain.checkpoint import find_latest, load_checkpoint

    folder = shard_writer(tmp_path / "shards", LENGTHS)
    train(tmp_path, folder, "one")
    train(tmp_path, folder, "cp2", "parallel.cp=2", nproc=2)
    assert load_checkpoint(find_latest(tmp_path / "runs" / "cp2")).trainer["layout"]["cp"] == 2
    one, cp2 = losses(tmp_path, "one"), losses(tmp_path, "cp2")
    assert len(one) == len(cp2) == 4
    assert cp2 == pytest.approx(one, rel=0, abs=1e-5)
