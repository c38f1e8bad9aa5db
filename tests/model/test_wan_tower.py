"""The Wan-architecture video tower against diffusers' ``WanTransformer3DModel`` (one process).

A tiny random diffusers model is saved with ``save_pretrained``, read back from its safetensors
file, mapped onto the tower, and both run on the same latents, timesteps and text states.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))  # --import-mode=importlib: not on the path
from _wan_tiny import TINY, inputs, make_tiny  # noqa: E402

from wallwm_pretrain.model.pipeline_slice import PipelineSlice  # noqa: E402
from wallwm_pretrain.model.wan import (  # noqa: E402
    WanConfig,
    WanTower,
    load_diffusers_folder,
    load_diffusers_weights,
    map_diffusers_state,
)
from wallwm_pretrain.model.wan.from_diffusers import WEIGHTS, tower_name  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wan_tiny")
    return folder, make_tiny(folder)


def loaded(folder, part=None, views=1, seed=0):
    config, _ = load_diffusers_folder(folder)
    tower = WanTower(WanConfig.from_diffusers(config, num_views=views), part, seed=seed)
    report = load_diffusers_weights(tower, folder)
    return tower, report


@pytest.mark.parametrize("per_token", [False, True], ids=["time_per_sample", "time_per_token"])
def test_tower_matches_diffusers_forward_and_gradients(tiny, per_token):
    folder, ref = tiny
    ref.zero_grad(set_to_none=True)  # the model is shared by the module's tests
    tower, report = loaded(folder)
    assert report.unused == [] and report.new == []
    assert len(report.mapped) == sum(1 for _ in ref.parameters())
    latents, timestep, text, weights = inputs(per_token=per_token)
    x_ref, x = latents[:, 0].clone().requires_grad_(True), latents.clone().requires_grad_(True)
    expected = ref(x_ref, timestep, text).sample
    got = tower(x, timestep, text)
    assert got.shape == latents.shape
    assert (got[:, 0] - expected).abs().max() < TOL
    (expected * weights[:, 0]).sum().backward()
    (got * weights).sum().backward()
    assert (x.grad[:, 0] - x_ref.grad).abs().max() < TOL
    ours = dict(tower.named_parameters())
    for name, p in ref.named_parameters():
        assert (ours[tower_name(name)].grad - p.grad).abs().max() < TOL * max(1.0, p.grad.abs().max().item()), name


def test_single_view_latents_may_be_5d(tiny):
    folder, ref = tiny
    tower, _ = loaded(folder)
    latents, timestep, text, _ = inputs()
    with torch.no_grad():
        assert torch.equal(tower(latents[:, 0], timestep, text), tower(latents, timestep, text)[:, 0])


def test_two_pipeline_slices_in_sequence_match_diffusers(tiny):
    folder, ref = tiny
    first, _ = loaded(folder, PipelineSlice(0, 1, embed=True, head=False))
    last, _ = loaded(folder, PipelineSlice(1, 1, embed=False, head=True))
    assert not hasattr(first, "proj_out") and not hasattr(last, "patch_embedding")
    assert set(first.blocks) == {"0"} and set(last.blocks) == {"1"}
    latents, timestep, text, _ = inputs(per_token=True)
    with torch.no_grad():
        packed = first(latents, timestep, text)
        assert packed.shape == first.packed_shape(first.geometry(latents, timestep, text))
        got = last(latents, timestep, text, hidden=packed)
        expected = ref(latents[:, 0], timestep, text).sample
    assert (got[:, 0] - expected).abs().max() < TOL
    with pytest.raises(ValueError, match="needs the previous rank's output"):
        last(latents, timestep, text)


def test_slices_draw_the_whole_towers_initial_weights():
    cfg = WanConfig(**{**TINY, "num_views": 2})
    whole = WanTower(cfg, seed=3).state_dict()
    parts = [WanTower(cfg, PipelineSlice(i, 1, embed=i == 0, head=i == 1), seed=3).state_dict() for i in range(2)]
    assert sorted(whole) == sorted(n for p in parts for n in p)
    for p in parts:
        for name, t in p.items():
            if isinstance(t, torch.Tensor):
                assert torch.equal(t, whole[name]), name


def test_multiview_with_zero_cross_view_projection_is_the_single_view_model_per_view(tiny):
    folder, ref = tiny
    tower, report = loaded(folder, views=3)
    assert report.new and all(".cross_view." in n for n in report.new)
    assert {n.split(".cross_view.")[1] for n in report.new} >= {"camera", "attention.linear_proj.weight"}
    latents, timestep, text, _ = inputs(views=3)
    with torch.no_grad():
        got = tower(latents, timestep, text)
        for v in range(3):
            assert (got[:, v] - ref(latents[:, v], timestep, text).sample).abs().max() < TOL
        # the graft is live: once W_view and the cameras move, views see each other
        for block in tower.blocks.values():
            block.cross_view.attention.linear_proj.weight.normal_(0, 0.1)
            block.cross_view.camera.normal_(0, 1.0)
        mixed = tower(latents, timestep, text)
        latents2 = latents.clone()
        latents2[:, 2] += 1.0  # change only view 2
        moved = tower(latents2, timestep, text)
    assert (mixed[:, 0] - got[:, 0]).abs().max() > 1e-3
    assert (moved[:, 0] - mixed[:, 0]).abs().max() > 1e-4  # view 0 reads view 2


def test_cross_view_attention_stays_within_a_latent_frame(tiny):
    folder, _ = tiny
    tower, _ = loaded(folder, views=2)
    with torch.no_grad():
        for block in tower.blocks.values():
            block.cross_view.attention.linear_proj.weight.normal_(0, 0.1)
        # one block, so that self-attention (which mixes frames) cannot carry the change further
        block = tower.blocks["0"].cross_view
        x = torch.randn(3 * 4, 2 * 2, TINY["num_attention_heads"] * TINY["attention_head_dim"])  # F=3, P=4, B=2, V=2
        rope = tuple(t[:12] for t in tower.rope(tower.geometry(torch.zeros(2, 2, 4, 3, 4, 4), torch.zeros(2), torch.zeros(2, 1, 16))))
        base = block(x, 3, rope)
        x2 = x.clone()
        x2[8:12, 1] += 1.0  # frame 2 of (sample 0, view 1)
        out = block(x2, 3, rope)
    changed = (out - base).abs().amax(dim=-1) > 1e-6  # [F * P, rows]
    assert changed[8:12, :2].all() and not changed[:8].any() and not changed[:, 2:].any()


def test_unused_checkpoint_tensor_is_an_error_naming_it(tiny, tmp_path):
    folder, _ = tiny
    state = load_file(folder / WEIGHTS)
    state["blocks.0.attn1.to_gate.weight"] = torch.zeros(3)
    save_file(state, tmp_path / WEIGHTS)
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    tower = WanTower(WanConfig.from_diffusers(json.loads((folder / "config.json").read_text())), seed=0)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn1\.to_gate\.weight"):
        load_diffusers_weights(tower, tmp_path)
    report = load_diffusers_weights(tower, tmp_path, allow_unused=True)
    assert report.unused == ["blocks.0.attn1.to_gate.weight"]
    del state["blocks.1.ffn.net.2.bias"], state["blocks.0.attn1.to_gate.weight"]
    with pytest.raises(ValueError, match=r"lacks tensors for \['blocks\.1\.mlp\.linear_fc2\.bias'\]"):
        map_diffusers_state(state, json.loads((folder / "config.json").read_text()))


def test_shape_mismatch_names_both_tensors(tiny):
    folder, _ = tiny
    config, state = load_diffusers_folder(folder)
    state["blocks.1.attn2.norm_k.weight"] = torch.ones(7)
    with pytest.raises(ValueError, match=r"blocks\.1\.attn2\.norm_k\.weight has shape \(7,\).*cross_attention\.k_norm"):
        map_diffusers_state(state, config)


@pytest.mark.parametrize("key,value", [("image_dim", 32), ("added_kv_proj_dim", 32)])
def test_image_conditioned_config_is_refused(key, value):
    with pytest.raises(ValueError, match=rf"my/config.json: image conditioning \({key}={value}\) is not supported"):
        WanConfig.from_diffusers({**TINY, key: value}, "my/config.json")


def test_bad_folders_and_configs_name_the_file(tmp_path, tiny):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "config.json")):
        load_diffusers_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**TINY, "_class_name": "AutoencoderKLWan"}))
    with pytest.raises(FileNotFoundError, match=WEIGHTS):
        load_diffusers_folder(tmp_path)
    with pytest.raises(ValueError, match="_class_name is 'AutoencoderKLWan'"):
        WanConfig.from_diffusers(json.loads((tmp_path / "config.json").read_text()))
    with pytest.raises(ValueError, match=r"unknown WanTransformer3DModel config keys \['num_frames'\]"):
        WanConfig.from_diffusers({**TINY, "num_frames": 3})


def test_sharded_checkpoint_folder_loads(tiny, tmp_path):
    folder, ref = tiny
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert not (tmp_path / WEIGHTS).exists() and len(list(tmp_path.glob("*.safetensors"))) > 1
    _, state = load_diffusers_folder(tmp_path)
    assert sorted(state) == sorted(load_file(folder / WEIGHTS))


def test_parameter_count_on_meta_matches_diffusers():
    from diffusers import WanTransformer3DModel

    # the shape of Wan2.2-TI2V-5B's transformer (24 x 128 heads, 30 blocks, 48 latent channels)
    config = dict(patch_size=(1, 2, 2), num_attention_heads=24, attention_head_dim=128, in_channels=48,
                  out_channels=48, text_dim=4096, freq_dim=256, ffn_dim=14336, num_layers=30, cross_attn_norm=True,
                  eps=1e-6, rope_max_seq_len=1024)
    with torch.device("meta"):
        ref = WanTransformer3DModel(**config)
        tower = WanTower(WanConfig.from_diffusers(config, num_views=2), seed=0)
    count = lambda named: sum(p.numel() for _, p in named)  # noqa: E731
    new = [(n, p) for n, p in tower.named_parameters() if ".cross_view." in n]
    pretrained = [(n, p) for n, p in tower.named_parameters() if ".cross_view." not in n]
    assert count(pretrained) == count(ref.named_parameters())
    d = 24 * 128
    assert count(new) == 30 * (4 * (d * d + d) + 2 * d + 2 * d)  # q, k, v, proj + q/k norms + 2 cameras
    assert sorted(n for n, _ in new) == sorted(tower.new_parameter_names())


def test_coupling_keys_put_all_views_of_a_sample_in_one_sequence():
    from wallwm_pretrain.model.wan import coupling_keys

    s, b, v, d = 5, 2, 3, 4
    video = torch.arange(s * b * v * d, dtype=torch.float32).view(s, b * v, d)
    keys = coupling_keys(video, v)
    assert keys.shape == (v * s, b, d)
    for sample in range(b):
        for view in range(v):
            assert torch.equal(keys[view * s:(view + 1) * s, sample], video[:, sample * v + view])


def test_converted_state_has_new_parts_as_initialised_and_reports_counts(tiny):
    from wallwm_pretrain.model.wan import convert_tower_state

    folder, ref = tiny
    cfg, state, report = convert_tower_state(folder, num_views=2, seed=5)
    assert sorted(report.new) == sorted(n for n in state if ".cross_view." in n and not n.endswith("_extra_state"))
    assert all(state[n].abs().max() == 0 for n in report.new if n.endswith(("linear_proj.weight", "linear_proj.bias", "camera")))
    counts = WanTower(cfg, seed=0).parameter_counts()
    assert counts["pretrained"] == sum(p.numel() for p in ref.parameters())
    assert counts["cross_view"] == sum(state[n].numel() for n in report.new)


def test_full_recompute_gives_the_same_gradients(tiny):
    folder, _ = tiny
    latents, timestep, text, weights = inputs(views=2)
    grads = []
    for mode in ("none", "full"):
        tower, _ = loaded(folder, views=2)
        tower.recompute = mode
        torch.manual_seed(0)
        for block in tower.blocks.values():  # a live graft, so its gradients are not trivially zero
            torch.nn.init.normal_(block.cross_view.attention.linear_proj.weight, 0, 0.1)
        (tower(latents, timestep, text) * weights).sum().backward()
        grads.append({n: p.grad for n, p in tower.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, atol=1e-6), name
    with pytest.raises(ValueError, match="'none' or 'full'"):
        WanTower(WanConfig(**TINY), seed=0, recompute="selective")


def test_padding_masks_hide_padded_keys():
    from wallwm_pretrain.model.wan.attention import attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 2, 2, 4, generator=g) for _ in range(3))  # [s, b, heads, d]
    pad = torch.tensor([[False, False, True], [True, True, True]])[:, None, None, :]
    out = attend(q, k, v, pad)
    # sample 0: its third key is padding, so changing it changes nothing
    k2, v2 = k.clone(), v.clone()
    k2[2, 0] += 5.0
    v2[2, 0] -= 3.0
    assert torch.allclose(attend(q, k2, v2, pad)[:, 0], out[:, 0], atol=1e-6)
    assert torch.allclose(attend(q, k[:2], v[:2])[:, 0], out[:, 0], atol=1e-6)
    # sample 1: every key is padding -> uniform attention (the mean of the values, as megatron's
    # core gives), never NaN
    assert torch.allclose(out[:, 1], v[:, 1].mean(dim=0).flatten().expand(3, -1), atol=1e-6)


def test_frame_and_text_masks_reach_the_blocks(tiny):
    folder, _ = tiny
    tower, _ = loaded(folder)
    latents, timestep, text, _ = inputs()
    frame_valid = torch.tensor([[True, True, True], [True, True, False]])
    text_valid = torch.tensor([[True] * 5, [True, True, False, False, False]])
    with torch.no_grad():
        base = tower(latents, timestep, text, frame_valid=frame_valid, text_valid=text_valid)
        latents2, text2 = latents.clone(), text.clone()
        latents2[1, :, :, 2] += 3.0  # sample 1's padded frame
        text2[1, 2:] -= 2.0  # sample 1's padded text tokens
        moved = tower(latents2, timestep, text2, frame_valid=frame_valid, text_valid=text_valid)
    assert torch.allclose(moved[1, :, :, :2], base[1, :, :, :2], atol=1e-5)  # real frames do not see padding
    assert torch.equal(moved[0], base[0])
