"""Unified mode's three text-context sources (model/context.py) on the tiny Wan towers and the
tiny random Qwen3.5 VLM of make-tiny: the DiT loss reaches the conditioner's adapter and alignment
head through the global source and never the frozen VLM; the Staircase latents reach the towers
through their projection with the branch frozen; atomic rows keep their states; switching a
chunk's source leaves the denoiser's state unchanged."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch

from tests.model._wan_wallwm_tiny import CFG, wan_batch
from wallwm_pretrain.config import ConditionerConfig, ConfigError, ContextConfig, StaircaseConfig, load_config
from wallwm_pretrain.model.freeze import apply_train_parts
from wallwm_pretrain.model.wan_wallwm import WanWallWM

pytestmark = pytest.mark.usefixtures("one_thread")

VIEWS, HW = 2, 32


def _cfg(models, sources=("global", "staircase"), train_parts=("all",)):
    cond = ConditionerConfig(vlm=str(models / "vlm"), vlm_dtype="float32", hidden_size=32, num_heads=2,
                             align_layers=1, align_tokens=5, text_dim=CFG.wan.text_dim)
    stair = StaircaseConfig(latents=3, relay_depth=1, num_heads=2, ffn_mult=2)
    return replace(CFG, conditioner=cond, staircase=stair, context=ContextConfig(sources=list(sources)),
                   train_parts=list(train_parts))


def _model(cfg, seed=0):
    torch.manual_seed(seed)
    return WanWallWM(cfg)


def _batch(context, seed=3):
    b = len(context)
    batch = wan_batch(seed, b=b)
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (b, batch.actions.shape[1], VIEWS, HW, HW, 3), generator=g, dtype=torch.uint8)
    tasks = ["put the red block in the bin", "open the drawer", "stack the cups", "wipe the table"][:b]
    done = [[], ["reach the handle"], [], ["pick up the sponge", "move to the table"]][:b]
    return replace(batch, frames=frames, context=list(context), task=tasks, done=done)


def _vlm_params(vlm):
    return dict(vlm._model.named_parameters())


def test_global_source_trains_the_alignment_path_and_not_the_vlm(cond_world):
    model = _model(_cfg(cond_world["models"], sources=("global",)))
    vlm = model.context.vlm
    before = {n: p.detach().clone() for n, p in _vlm_params(vlm).items()}
    batch = _batch(["global", "atomic", "global", "atomic"])
    out = model(batch, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    for name in ("context.adapter.proj.weight", "context.align.out.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in _vlm_params(vlm).values())
    assert not any(n.startswith("context.vlm") for n in model.state_dict())
    for n, p in _vlm_params(vlm).items():
        assert torch.equal(p, before[n]), n


def test_rows_read_their_own_source(cond_world):
    model = _model(_cfg(cond_world["models"])).eval()
    batch = _batch(["atomic", "global", "staircase", "atomic"])
    with torch.no_grad():
        out = model.with_context(batch)
        obs = batch.frames[:, 0]
        glob = model.context.global_states(obs[1:2], batch.task[1:2], batch.done[1:2])[0]
        stair = model.context.staircase_states(obs[2:3], batch.task[2:3], batch.done[2:3])[0]
    width = max(batch.text_states.shape[1], glob.shape[0], stair.shape[0])
    assert out.text_states.shape == (4, width, CFG.wan.text_dim)
    for i in (0, 3):  # atomic rows: the batch's own states and mask, zero padded
        n = batch.text_states.shape[1]
        assert torch.equal(out.text_states[i, :n], batch.text_states[i].float())
        assert torch.equal(out.text_valid[i, :n], batch.text_valid[i])
        assert not out.text_valid[i, n:].any()
    for i, want in ((1, glob), (2, stair)):
        torch.testing.assert_close(out.text_states[i, :want.shape[0]], want, atol=1e-5, rtol=1e-5)
        assert out.text_valid[i].sum() == want.shape[0]
    assert stair.shape[0] == 3  # K_c latents
    assert glob.shape[0] == 5  # the alignment head's positions
    # what the Wan tower reads of a global row: the head's positions (each trained), then Wan's zeros
    inputs = model.flow_inputs(out, model.sample_noise(out, torch.Generator().manual_seed(0)))
    assert inputs.text_states.shape[1] == CFG.text_len == 8
    torch.testing.assert_close(inputs.text_states[1, :5], glob, atol=1e-5, rtol=1e-5)
    assert (inputs.text_states[1, 5:] == 0).all() and model.layer_inputs(inputs).text_mask is None


def test_the_wan_tower_reads_at_most_text_len_aligned_positions(cond_world):
    cfg = _cfg(cond_world["models"], sources=("global",))
    cfg = replace(cfg, conditioner=replace(cfg.conditioner, align_tokens=CFG.text_len + 3))
    model = _model(cfg).eval()
    batch = _batch(["global", "atomic"])
    with torch.no_grad():
        glob = model.context.global_states(batch.frames[:, 0], batch.task, batch.done)
        states, valid = model.context.vlm.encode(batch.frames[:, 0], model.context.prompts(batch.task, batch.done))
        full = model.context.align(model.context.adapter(states.float()), ~valid)  # every head position
        inputs = model.flow_inputs(model.with_context(batch), model.sample_noise(batch, torch.Generator().manual_seed(0)))
    assert glob.shape[1] == CFG.text_len and full.shape[1] == CFG.text_len + 3
    torch.testing.assert_close(glob, full[:, : CFG.text_len], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(inputs.text_states[0], glob[0], atol=1e-5, rtol=1e-5)


def test_staircase_branch_frozen_projection_trained(cond_world):
    cfg = _cfg(cond_world["models"], sources=("staircase",),
               train_parts=("video_tower", "action_tower", "time_head", "context_projection"))
    model = _model(cfg)
    counts = apply_train_parts(model, cfg)
    assert counts["frozen.context_staircase"] > 0 and counts["trained.context_projection"] > 0
    branch = {n: p.detach().clone() for n, p in model.context.branch.named_parameters()}
    batch = _batch(["staircase", "staircase"])
    model(batch, generator=torch.Generator().manual_seed(0))["loss"].backward()
    assert all(p.grad is None for p in model.context.branch.parameters())
    assert model.context.staircase_proj[1].weight.grad.abs().sum() > 0
    assert all(torch.equal(p, branch[n]) for n, p in model.context.branch.named_parameters())


def test_switching_sources_leaves_the_denoiser_unchanged(cond_world):
    model = _model(_cfg(cond_world["models"])).eval()
    fresh = copy.deepcopy(model)
    tensors = lambda m: {n: v for n, v in m.state_dict().items() if isinstance(v, torch.Tensor)}  # noqa: E731
    state = {n: v.clone() for n, v in tensors(model).items()}
    batch = _batch(["global", "global"])
    with torch.no_grad():
        for source in ("staircase", "atomic", "global", "staircase"):
            model(replace(batch, context=[source] * 2), generator=torch.Generator().manual_seed(1))
        after = model(batch, generator=torch.Generator().manual_seed(2))
        alone = fresh(batch, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(v, state[n]) for n, v in tensors(model).items())
    assert torch.equal(after["loss"], alone["loss"])
    with torch.no_grad():
        atomic = model(replace(batch, context=["atomic"] * 2), generator=torch.Generator().manual_seed(2))
    assert not torch.equal(atomic["loss"], after["loss"])  # the source does change the chunk's context


def test_a_source_the_model_lacks_fails_clearly(cond_world):
    model = _model(_cfg(cond_world["models"], sources=("global",)))
    with pytest.raises(ValueError, match="staircase.*model.context.sources"):
        model(_batch(["staircase", "atomic"]), generator=torch.Generator().manual_seed(0))
    plain = WanWallWM(CFG)
    with pytest.raises(ValueError, match="builds none"):
        plain(_batch(["global", "atomic"]), generator=torch.Generator().manual_seed(0))


def test_config_checks():
    with pytest.raises(ConfigError, match="model.context.sources"):
        load_config("configs/smoke_wan.yaml", ["data.mode=unified", "data.context_mix.global=1"])
    with pytest.raises(ConfigError, match="conditioner.text_dim"):
        load_config("configs/smoke.yaml", ["model.context.sources=[global]", "model.conditioner.vlm=x"])
    with pytest.raises(ConfigError, match="model.kind=towers"):
        load_config("configs/smoke_conditioner.yaml", ["model.context.sources=[global]"])
    with pytest.raises(ConfigError, match="at most once"):
        load_config("configs/smoke_wan.yaml", ["model.context.sources=[global,global]"])
    with pytest.raises(ConfigError, match="pp=1"):
        load_config("configs/smoke_wan.yaml", ["model.context.sources=[global]", "model.conditioner.vlm=x",
                                               "parallel.pp=2"])


def test_context_weights_come_from_their_stages(cond_world, tmp_path):
    """model.context.conditioner_from / staircase_from: the stage-3 heads and the stage-4 branch,
    under context., beside model.init_from's towers; the conditioner's other heads are left out."""
    from safetensors.torch import save_file

    from wallwm_pretrain.checkpoint.manifest import CheckpointError
    from wallwm_pretrain.handoff import init_sources
    from wallwm_pretrain.model.conditioner.model import TextConditioner
    from wallwm_pretrain.model.conditioner.staircase import StaircaseBranch

    cfg = _cfg(cond_world["models"])
    source = _model(cfg, seed=5)
    tensors = lambda m: {n: v.contiguous() for n, v in m.state_dict().items() if isinstance(v, torch.Tensor)}  # noqa: E731
    towers = {n: v for n, v in tensors(source).items() if not n.startswith("context.")}
    save_file(towers, str(tmp_path / "towers.safetensors"))
    conditioner = TextConditioner(replace(cfg, kind="conditioner"), vlm=source.context.vlm)
    save_file(tensors(conditioner), str(tmp_path / "cond.safetensors"))
    torch.manual_seed(9)
    branch = StaircaseBranch(source.context.vlm.num_layers, source.context.vlm.hidden_size, cfg.staircase)
    save_file({f"branch.{n}": v for n, v in tensors(branch).items()}, str(tmp_path / "stair.safetensors"))

    ctx = replace(cfg.context, conditioner_from=str(tmp_path / "cond.safetensors"),
                  staircase_from=str(tmp_path / "stair.safetensors"))
    weights, where = init_sources(replace(cfg, init_from=str(tmp_path / "towers.safetensors"), context=ctx))
    assert "towers.safetensors" in where and "as context.adapter/align" in where
    assert not any(n.startswith(("context.next_event", "context.time.")) for n in weights)
    target = _model(cfg, seed=6)
    missing = set(tensors(target)) - set(weights)
    assert missing == {n for n in tensors(target) if n.startswith("context.staircase_proj.")}
    target.load_state_dict(weights, strict=False)
    for name, value in tensors(conditioner).items():
        if name.startswith(("adapter.", "align.")):
            assert torch.equal(target.state_dict()[f"context.{name}"], value), name
    for name, value in tensors(branch).items():
        assert torch.equal(target.state_dict()[f"context.branch.{name}"], value), name
    with pytest.raises(CheckpointError, match="holds no branch"):
        init_sources(replace(cfg, context=replace(ctx, staircase_from=str(tmp_path / "cond.safetensors"))))


def _small_cfg(models, sources=("global", "staircase")):
    from wallwm_pretrain.config import ModelConfig

    cond = ConditionerConfig(vlm=str(models / "vlm"), vlm_dtype="float32", hidden_size=32, num_heads=2,
                             align_layers=1, align_tokens=5, text_dim=16)
    stair = StaircaseConfig(latents=3, relay_depth=1, num_heads=2, ffn_mult=2)
    return ModelConfig(hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, frame_stride=4, num_views=VIEWS,
                       action_dim=4, state_dim=8, image_size=HW, patch_size=16, conditioner=cond, staircase=stair,
                       context=ContextConfig(sources=list(sources)))


def _small_batch(context, history=1, seed=4):
    from wallwm_pretrain.batch import Batch
    from wallwm_pretrain.captions import encode_caption

    b, t, k = len(context), 8, 4
    g = torch.Generator().manual_seed(seed)
    caps = [encode_caption(c, 32) for c in ("reach the cube", "grasp it", "lift", "place it")[:b]]
    caption = torch.zeros(b, max(len(c) for c in caps), dtype=torch.long)
    for i, c in enumerate(caps):
        caption[i, :len(c)] = torch.from_numpy(c)
    return Batch(
        frames=torch.randint(0, 256, (b, history * k + t, VIEWS, HW, HW, 3), generator=g, dtype=torch.uint8),
        actions=torch.randn(b, t, 4, generator=g), state=torch.randn(b, 8, generator=g),
        lengths=torch.tensor([t, 5, t, 6][:b]), caption=caption, remaining=torch.tensor([9.0, 3.0, 20.0, 4.0][:b]),
        history=history, context=list(context), task=["stack the cups"] * b, done=[[], ["reach the cube"], [], []][:b],
    )


def test_small_towers_read_the_sources_through_their_text_stream(cond_world):
    from wallwm_pretrain.model.wallwm import WallWM

    torch.manual_seed(0)
    model = WallWM(_small_cfg(cond_world["models"]))
    torch.manual_seed(0)
    plain = WallWM(replace(_small_cfg(cond_world["models"]), context=ContextConfig()))
    plain.load_state_dict({n: v for n, v in model.state_dict().items() if not n.startswith("context.")})
    # an all-atomic batch is the plain towers' forward: the context module only adds rows' states
    batch = _small_batch(["atomic", "atomic", "atomic", "atomic"])
    a = model(batch, generator=torch.Generator().manual_seed(0))
    b = plain(batch, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["loss"], b["loss"])
    mixed = _small_batch(["global", "atomic", "staircase", "atomic"])
    out = model(mixed, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out["loss"], a["loss"])
    out["loss"].backward()
    params = dict(model.named_parameters())
    for name in ("context.adapter.proj.weight", "context.align.out.weight", "context.global_proj.weight",
                 "context.staircase_proj.1.weight", "caption.tokens.weight"):
        grad = params[name].grad
        assert grad is not None and grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.context.vlm._model.parameters())
    # the text stream of a global row is its projected aligned states, nothing of its caption
    with torch.no_grad():
        rows = model.context_rows(mixed)
        text, valid = model.text_context(mixed.caption, rows)
        glob = model.context.global_states(mixed.frames[:, 4][:1], mixed.task[:1], mixed.done[:1])[0]
    torch.testing.assert_close(text[:glob.shape[0], 0], glob, atol=1e-5, rtol=1e-5)
    assert valid[0].sum() == glob.shape[0] and valid[2].sum() == 3
