"""The Wan tower split over gloo ranks against diffusers and the one-process tower.

- TP=2: heads and FFN width split (the q/k RMS norm reduces its sum of squares over the group),
  loaded from the canonical whole-tensor state by the checkpoint layer's cut; output and
  gradients (gathered to whole tensors) equal diffusers' single-view forward and backward.
- TP=2 with three views and a live (non-zero) cross-view graft: equal to the one-process tower.
- PP=2: one block per pipeline rank, the packed streams and their gradient sent with send/recv;
  output and gradients equal diffusers'.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "parallel"))
from _launch import _CTX, run_ranks  # noqa: E402  (the project's gloo launcher)
from _wan_tiny import inputs, make_tiny  # noqa: E402

import _wan_worker as worker  # noqa: E402
from wallwm_pretrain.model.wan import WanTower, convert_tower_state  # noqa: E402
from wallwm_pretrain.model.wan.from_diffusers import tower_name  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_tiny")
    return folder, make_tiny(folder)


def canonical_tower(folder: Path, views: int) -> WanTower:
    """The one-process tower with the checkpoint's weights (and, with views, a live graft)."""
    cfg, state, _ = convert_tower_state(folder, num_views=views)
    tower = WanTower(cfg, seed=1)  # other initial weights: the state must replace all of them
    tower.load_state_dict(state, strict=True)
    if views > 1:
        g = torch.Generator().manual_seed(11)
        with torch.no_grad():
            for name, p in tower.named_parameters():
                if ".cross_view." in name:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return tower


def launch(tmp: Path, mode: str, folder: Path, views: int) -> list[dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    torch.save(canonical_tower(folder, views).state_dict(), tmp / "canonical.pt")
    procs = [_CTX.Process(target=worker.run_rank, args=(r, 2, mode, str(tmp / "rdzv"), str(tmp), str(folder), views))
             for r in range(2)]
    run_ranks(procs, f"the Wan tower ({mode}, {views} views)")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]


def diffusers_reference(ref) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    latents, timestep, text, weights = inputs()
    ref.zero_grad(set_to_none=True)
    x = latents[:, 0].clone().requires_grad_(True)
    out = ref(x, timestep, text).sample
    (out * weights[:, 0]).sum().backward()
    return out.detach(), {tower_name(n): p.grad for n, p in ref.named_parameters()}, x.grad


def assert_grads_close(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, g in expected.items():
        assert (got[name] - g).abs().max() < TOL * max(1.0, g.abs().max().item()), name


def test_tensor_parallel_2_matches_diffusers(tiny, tmp_path):
    folder, ref = tiny
    records = launch(tmp_path, "tp", folder, views=1)
    out, grads, latents_grad = diffusers_reference(ref)
    for r in records:
        assert (r["out"][:, 0] - out).abs().max() < TOL
        assert (r["latents_grad"][:, 0] - latents_grad).abs().max() < TOL
        assert_grads_close(r["grads"], grads)
        # heads, FFN width and the all-heads q/k norm are split; the row-parallel biases are not
        assert "blocks.0.self_attention.q_norm.weight" in r["sharded"]
        assert "blocks.1.mlp.linear_fc1.weight" in r["sharded"] and "blocks.1.mlp.linear_fc2.weight" in r["sharded"]
        assert "blocks.1.mlp.linear_fc2.bias" not in r["sharded"]


def test_tensor_parallel_2_multiview_graft_matches_one_process(tiny, tmp_path):
    folder, _ = tiny
    tower = canonical_tower(folder, views=3)
    latents, timestep, text, weights = inputs(views=3)
    latents.requires_grad_(True)
    out = tower(latents, timestep, text)
    (out * weights).sum().backward()
    records = launch(tmp_path, "tp", folder, views=3)
    expected = {n: p.grad for n, p in tower.named_parameters()}
    assert any(".cross_view." in n and g.abs().max() > 0 for n, g in expected.items())
    for r in records:
        assert (r["out"] - out.detach()).abs().max() < TOL
        assert_grads_close(r["grads"], expected)


def test_pipeline_parallel_2_matches_diffusers(tiny, tmp_path):
    folder, ref = tiny
    first, last = launch(tmp_path, "pp", folder, views=1)
    out, grads, latents_grad = diffusers_reference(ref)
    assert first["out"] is None
    assert (last["out"][:, 0] - out).abs().max() < TOL
    assert_grads_close({**first["grads"], **last["grads"]}, grads)
    assert set(first["grads"]).isdisjoint(last["grads"])


def test_tensor_parallel_2_optimizer_step_matches_one_process(tiny, tmp_path):
    """Muon sees each split q/k/v/proj/fc matrix whole (gathered over the group), AdamW the
    split biases and q/k norm gains: one step at TP=2 moves the weights as in one process."""
    from _wan_tiny import OPTIM

    from wallwm_pretrain.optim import build_optimizer

    folder, _ = tiny
    tower = canonical_tower(folder, views=1)
    latents, timestep, text, weights = inputs()
    (tower(latents, timestep, text) * weights).sum().backward()
    optim = build_optimizer(tower, OPTIM, 10)
    optim.clip_grad_norm(OPTIM.grad_clip)
    before = {n: p.detach().clone() for n, p in tower.named_parameters()}
    optim.step()
    records = launch(tmp_path, "tp_step", folder, views=1)
    moved = 0
    for name, p in tower.named_parameters():
        moved += int(not torch.equal(p, before[name]))
        for r in records:
            assert (r["after"][name] - p.detach()).abs().max() < 1e-5, name
    assert moved == len(before)
