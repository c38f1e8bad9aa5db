"""The text conditioner data parallel (gloo, 2 processes) against one process, through the
trainer's path (DDP-wrapped chunk, megatron's schedule, microbatches): the same global batch
split over two ranks, or over two microbatches, gives the same losses, step-0 gradients, grad
norms and heads after three Muon + AdamW steps; the frozen VLM is loaded on each rank and never
enters the buffers DDP reduces."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
from _launch import launch  # noqa: E402

KEYS = ("loss", "loss_align", "loss_next", "loss_time")


@pytest.fixture(scope="module")
def vlm(tmp_path_factory) -> str:
    from wallwm_pretrain.convert.tiny import make_tiny

    return str(make_tiny(tmp_path_factory.mktemp("cond_dp") / "models", seed=0)["vlm"])


@pytest.fixture(scope="module")
def single(vlm, tmp_path_factory):
    return launch(tmp_path_factory.mktemp("cond1"), world=1, tp=1, pipeline=True, conditioner=vlm)[0]["run"]


def _close(a: dict, b: dict, tol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=tol, rtol=tol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("layout", [dict(world=2), dict(world=1, microbatches=2)], ids=["dp2", "microbatches2"])
def test_split_batch_matches_one_process(vlm, single, tmp_path, layout):
    records = launch(tmp_path, tp=1, pipeline=True, conditioner=vlm, **layout)
    assert all(not n.startswith("vlm") for n in single["init"])
    for rec in records:
        run = rec["run"]
        for key in KEYS:
            assert run[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
        assert run["grad_norm"] == pytest.approx(single["grad_norm"], rel=1e-5)
        _close(run["grads0"], single["grads0"], 1e-6)
        _close(run["final"], single["final"], 2e-5)
    # the steps moved the heads, and every loss term took part
    assert any(not torch.equal(single["init"][n], single["final"][n]) for n in single["init"])
    assert all(v > 0 for k in KEYS for v in single[k])
