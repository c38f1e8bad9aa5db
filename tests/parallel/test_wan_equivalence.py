"""The trainer's path (model chunks, megatron's schedules, Muon + AdamW) on the Wan video tower
(``model.video_tower=wan``, tests/model/_wan_wallwm_tiny.py): TP2, PP2 and DP2 x PP2 (gloo)
against one process, same losses, gradients, grad norms and weights after three steps
(tolerances: ``_reference.py``). PP2 passes both towers' streams, of different widths, through
one ``[n, b, Wan width]`` message.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
from _launch import launch  # noqa: E402
from _reference import assert_matches_reference  # noqa: E402


@pytest.fixture(scope="module")
def wan_reference(tmp_path_factory):
    return launch(tmp_path_factory.mktemp("wan_tp1"), world=1, tp=1, pipeline=True, wan=True)[0]["run"]


def test_wan_tp2_matches_single_process(tmp_path, wan_reference):
    records = launch(tmp_path, world=2, tp=2, pipeline=True, wan=True)
    assert records[0]["run"]["layout"]["video.blocks.0.self_attention.linear_q.weight"]["sharded"]
    assert records[0]["run"]["layout"]["action_layers.0.block.video_attn.linear_kv.weight"]["sharded"]
    assert_matches_reference(records, wan_reference)


def test_wan_pp2_matches_single_process(tmp_path, wan_reference):
    records = launch(tmp_path, world=2, tp=1, pipeline=True, pp=2, microbatches=2, wan=True)
    held = [set(r["run"]["init"]) for r in records]
    assert any(n.startswith("video.blocks.0.") for n in held[0]) and any(n.startswith("action_layers.0.") for n in held[0])
    assert any(n.startswith("video.blocks.1.") for n in held[1]) and any(n.startswith("action_layers.1.") for n in held[1])
    assert not held[0] & held[1]
    assert_matches_reference(records, wan_reference)


def test_wan_tp2_pp2_matches_single_process(tmp_path, wan_reference):
    records = launch(tmp_path, world=4, tp=2, pipeline=True, pp=2, microbatches=2, wan=True)
    assert sorted((r["ctx"]["pp_rank"], r["ctx"]["tp_rank"]) for r in records) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert_matches_reference(records, wan_reference)


def test_wan_tp2_pp2_with_history_matches_single_process(tmp_path):
    """Unified-mode windows (2 history latent frames before the anchor) through TP2 x PP2."""
    reference = launch(tmp_path / "ref", world=1, tp=1, pipeline=True, wan=True, history=2)[0]["run"]
    records = launch(tmp_path / "tp2pp2", world=4, tp=2, pipeline=True, pp=2, microbatches=2, wan=True, history=2)
    assert_matches_reference(records, reference)


def test_wan_dp2_matches_single_process(tmp_path, wan_reference):
    records = launch(tmp_path, world=2, tp=1, pipeline=True, wan=True)
    assert sorted(r["ctx"]["dp_rank"] for r in records) == [0, 1]
    assert_matches_reference(records, wan_reference)


def test_wan_pp2_with_full_recompute_matches(tmp_path, wan_reference):
    records = launch(tmp_path, world=2, tp=1, pipeline=True, pp=2, microbatches=2, wan=True, recompute="full")
    assert_matches_reference(records, wan_reference)


def test_wan_pp2_interleaved_matches_single_process(tmp_path):
    """vpp = 2 over 4 coupled layers: rank 0 holds layers 0 and 2 of both towers, rank 1 layers 1 and 3."""
    reference = launch(tmp_path / "ref", world=1, tp=1, pipeline=True, wan=True, num_layers=4)[0]["run"]
    records = launch(tmp_path / "vpp", world=2, tp=1, pipeline=True, pp=2, vpp=2, microbatches=4, num_layers=4,
                     wan=True)
    for rec, expected in zip(records, (["0", "2"], ["1", "3"])):
        held = rec["run"]["init"]
        assert sorted({n.split(".")[2] for n in held if n.startswith("video.blocks.")}) == expected
        assert sorted({n.split(".")[1] for n in held if n.startswith("action_layers.")}) == expected
    assert_matches_reference(records, reference)
