"""A training stage (model.train_parts) data parallel and pipelined (gloo, 2 processes) against one
process, through the trainer's path (freezing before DDP wrapping, megatron's schedule, distributed
Muon in owner mode): the same global batch gives the same losses and trained weights; frozen
parameters are in no DDP buffer, in neither optimizer nor the Muon home plan, and end bit-identical
to their start."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
from _launch import launch, logical  # noqa: E402

from wallwm_pretrain.components import component_of, component_patterns  # noqa: E402

STAGE2 = dict(pipeline=True, train_parts=["action_tower", "time_head"], video_loss_weight=0.0, muon_mode="owner")
TRAINED = {"action_tower", "time_head"}


def owner(name: str) -> str:
    return component_of(name, component_patterns("towers", "small"))


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("stage1p"), world=1, tp=1, **STAGE2)[0]["run"]


def test_single_process_stage_freezes_what_it_should(single):
    trained = {n for n in single["init"] if owner(n) in TRAINED}
    frozen = set(single["init"]) - trained
    assert trained and frozen
    assert set(single["bucketed"]) == trained and set(single["optimized"]) == trained
    assert single["muon_plan"] and set(single["muon_plan"]) <= trained
    assert set(single["grads0"]) == trained
    for n in frozen:
        assert torch.equal(single["init"][n], single["final"][n]), n
    assert any(v > 0 for v in single["loss_video"])  # measured, though weighted 0
    assert single["loss"] == pytest.approx([a + 0.1 * t for a, t in zip(single["loss_action"], single["loss_time"])],
                                           rel=1e-6)


ANCHOR = dict(STAGE2, anchor_draws=3)


@pytest.fixture(scope="module")
def anchor_one(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("anchor1p"), world=1, tp=1, **ANCHOR)[0]["run"]


@pytest.mark.parametrize("layout", [dict(world=2, tp=1), dict(world=2, tp=2), dict(world=1, tp=1, microbatches=2)],
                         ids=["dp2", "tp2", "microbatches2"])
def test_anchor_noise_stage_over_two_processes_matches_one(anchor_one, tmp_path, layout):
    """Action pretraining with anchor noise (3 action draws per video forward) through the trainer's
    path: data parallel (the draws split by rows), tensor parallel (the same layers in another
    order) and two microbatches give the one-process losses and trained weights; the video loss is
    0 and the frozen video tower ends bit-identical."""
    one = anchor_one
    assert all(v == 0 for v in one["loss_video"]) and all(v > 0 for v in one["loss_action"])
    records = launch(tmp_path, **ANCHOR, **layout)
    for rec in records:
        run = rec["run"]
        for key in ("loss", "loss_video", "loss_action", "loss_time"):
            assert run[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
        for n in run["init"]:
            if owner(n) in TRAINED:
                if rec["ctx"]["tp"] == 1:
                    torch.testing.assert_close(run["final"][n], one["final"][n], atol=2e-5, rtol=2e-5)
            else:
                assert torch.equal(run["final"][n], run["init"][n]), n
    if layout["tp"] == 2:
        for n, ref in one["final"].items():
            if owner(n) in TRAINED:
                torch.testing.assert_close(logical(records, "run", "final", n), ref, atol=2e-5, rtol=2e-5, msg=n)


@pytest.mark.parametrize("layout", [dict(world=2), dict(world=2, pp=2, microbatches=2)], ids=["dp2", "pp2"])
def test_stage_split_over_two_processes_matches_one(single, tmp_path, layout):
    records = launch(tmp_path, tp=1, **STAGE2, **layout)
    for rec in records:
        run = rec["run"]
        for key in ("loss", "loss_action", "loss_time"):
            assert run[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
        mine = set(run["init"])
        assert set(run["bucketed"]) == {n for n in mine if owner(n) in TRAINED}
        assert set(run["optimized"]) == {n for n in mine if owner(n) in TRAINED}
        for n in mine:
            if owner(n) in TRAINED:
                torch.testing.assert_close(run["final"][n], single["final"][n], atol=2e-5, rtol=2e-5)
            else:
                assert torch.equal(run["final"][n], single["init"][n]), n


def test_conditioner_stage_trains_the_named_heads_only(tmp_path):
    """Freezing by component on the text conditioner: two of its four heads train."""
    from wallwm_pretrain.convert.tiny import make_tiny

    vlm = str(make_tiny(tmp_path / "models", seed=0)["vlm"])
    parts = ["alignment_head", "time_head"]
    run = launch(tmp_path / "run", world=1, tp=1, pipeline=True, conditioner=vlm, train_parts=parts)[0]["run"]
    patterns = component_patterns("conditioner", "small")
    trained = {n for n in run["init"] if component_of(n, patterns) in parts}
    assert trained and set(run["init"]) - trained
    assert set(run["bucketed"]) == trained and set(run["optimized"]) == trained
    for n in run["init"]:
        same = torch.equal(run["init"][n], run["final"][n])
        assert same == (n not in trained), n


@pytest.mark.parametrize("parts", [["video_tower"], ["action_tower", "time_head"]], ids=["video", "action"])
def test_wan_tower_stage_trains_the_named_components_only(tmp_path, parts):
    """The Wan-tower model (its cross-view attention in the video tower, the coupling projections
    in the action tower), one process, owner-mode Muon."""
    weights = dict(video_loss_weight=0.0) if "video_tower" not in parts else {}
    run = launch(tmp_path, world=1, tp=1, pipeline=True, wan=True, train_parts=parts, muon_mode="owner",
                 **weights)[0]["run"]
    patterns = component_patterns("towers", "wan")
    trained = {n for n in run["init"] if component_of(n, patterns) in parts}
    assert trained and set(run["init"]) - trained
    assert set(run["bucketed"]) == trained and set(run["optimized"]) == trained
    assert set(run["muon_plan"]) <= trained
    for n in set(run["init"]) - trained:
        assert torch.equal(run["init"][n], run["final"][n]), n
    assert any(not torch.equal(run["init"][n], run["final"][n]) for n in trained)
