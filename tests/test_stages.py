"""Training stages: freezing by component (model.train_parts) and the hand-off between stages
(model.init_from from a previous stage's checkpoint or export), on the small towers."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from wallwm_pretrain.checkpoint import CheckpointError, find_latest, load_checkpoint, load_model_state
from wallwm_pretrain.components import component_of, component_patterns
from wallwm_pretrain.config import ConfigError, ModelConfig, load_config

from test_trainer import LENGTHS, TINY

# The state cross-attention has one key (the state token), so its softmax is 1 whatever the query:
# the query side (``norm_state``, ``state_attn.linear_q``) gets no gradient in any run, and the
# AdamW-held norm never moves (the Muon-held linear_q moves by weight decay alone).
NO_GRADIENT = ".norm_state."
STAGE1 = ["model.train_parts=[video_tower,caption_encoder]", "model.action_loss_weight=0", "model.time_loss_weight=0"]
STAGE2 = ["model.train_parts=[action_tower,time_head]", "model.video_loss_weight=0"]


def build(tmp_path, folder, name, *extra):
    from wallwm_pretrain.trainer import Trainer

    cfg = load_config(None, TINY + [f"data.shards={folder}", f"train.runs_root={tmp_path / 'runs'}",
                                    f"train.run_name={name}", *extra])
    return Trainer(cfg)


def train(trainer):
    from wallwm_pretrain.parallel import shutdown_parallel

    try:
        return trainer.train()
    finally:
        shutdown_parallel()


def set_up(tmp_path, folder, name, *extra):
    """A trainer built (and its init_from applied), not trained."""
    from wallwm_pretrain.parallel import shutdown_parallel

    try:
        trainer = build(tmp_path, folder, name, *extra)
        trainer.close()
        return trainer
    finally:
        shutdown_parallel()


def weights(trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for c in trainer.chunks for n, p in c.named_parameters()}


def components(names, cfg) -> dict[str, str]:
    patterns = component_patterns(cfg.kind, cfg.video_tower)
    return {n: component_of(n, patterns) for n in names}


def optimizer_names(ckpt_dir) -> set[str]:
    split = load_checkpoint(ckpt_dir).optimizer["split"]
    return {n for group in split.values() for n in group}


def check_stage(trainer, start, trained_parts, ckpt_dir=None, all_change=True):
    """Frozen tensors bit-identical to their start and not in the optimizer; trained ones changed
    (``all_change``: every one; zero-initialised gates keep some at their start for a step or two)."""
    end = weights(trainer)
    owner = components(end, trainer.cfg.model)
    trained = {n for n, c in owner.items() if c in trained_parts}
    frozen = set(end) - trained
    assert trained and frozen
    for n in frozen:
        assert torch.equal(end[n], start[n]), f"frozen {n} changed"
        assert not dict(p for c in trainer.chunks for p in c.named_parameters())[n].requires_grad
    changed = [n for n in trained if not torch.equal(end[n], start[n])]
    expected = {n for n in trained if NO_GRADIENT not in n}
    assert changed and (not all_change or set(changed) == expected), f"unchanged trained tensors: {sorted(trained - set(changed))[:5]}"
    if ckpt_dir is not None and not (ckpt_dir / "index.json").is_file():  # gathered: the optimizer's own record
        assert optimizer_names(ckpt_dir) == trained
    # DDP buckets hold exactly the trained parameters
    for chunk in trainer.model:
        bucketed = {p for buf in chunk.buffers for p in buf.params}
        assert bucketed == {p for p in chunk.module.parameters() if p.requires_grad}


@pytest.mark.parametrize("video_tower", ["small", "wan"])
def test_every_parameter_belongs_to_one_component(video_tower):
    from wallwm_pretrain.model import build_model

    cfg = ModelConfig(video_tower=video_tower, hidden_size=32, num_heads=2, ffn_hidden_size=64)
    if video_tower == "wan":
        cfg.wan.num_attention_heads, cfg.wan.attention_head_dim, cfg.wan.in_channels = 2, 8, 4
        cfg.wan.out_channels, cfg.wan.text_dim, cfg.wan.ffn_dim, cfg.wan.freq_dim = 4, 16, 32, 16
    model = build_model(cfg)
    owner = components([n for n, _ in model.named_parameters()], cfg)
    # unified mode's context components exist with model.context.sources only (tests/conditioner/test_context.py)
    expected = {c for c in component_patterns("towers", video_tower) if not c.startswith("context_")}
    assert set(owner.values()) == expected
    # the coupling (the action tower's reading of the video tower) belongs to the action tower
    assert {c for n, c in owner.items() if "video_attn" in n or "coupling" in n} == {"action_tower"}


def test_train_parts_errors_name_the_valid_components(tmp_path, shard_writer):
    with pytest.raises(ConfigError, match="unknown component 'video'.*video_tower, action_tower, caption_encoder"):
        load_config(None, ["model.train_parts=[video]"])
    with pytest.raises(ConfigError, match="caption_encoder"):  # the Wan model has no caption encoder
        load_config(None, ["model.video_tower=wan", "model.train_parts=[caption_encoder]"])
    with pytest.raises(ConfigError, match="nothing would train"):
        load_config(None, ["model.train_parts=[]"])


def test_stage1_then_stage2_freeze_and_hand_off(tmp_path, shard_writer):
    """Stage 1 trains the video tower (and the caption encoder) alone, stage 2 starts from its
    final weights exactly and trains the action tower (and the time head) alone; stage 2 stops
    and resumes with frozen parameters in its checkpoint like any run."""
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    s1 = build(tmp_path, folder, "s1", "train.steps=3", "train.save_format=gathered", *STAGE1)
    start = weights(s1)
    summary = train(s1)
    check_stage(s1, start, {"video_tower", "caption_encoder"}, find_latest(tmp_path / "runs" / "s1"))
    assert summary.end_step == 3

    _, final, _ = load_model_state(find_latest(tmp_path / "runs" / "s1"))
    s2 = build(tmp_path, folder, "s2", "train.steps=4", "train.stop_after=2",
               f"model.init_from={tmp_path / 'runs' / 's1'}", *STAGE2)
    start2 = weights(s2)
    for n, v in start2.items():  # stage 2 starts exactly from stage 1's final weights
        assert torch.equal(v, final[n]), n
    report = json.loads((tmp_path / "runs" / "s2" / "init_from.json").read_text())
    assert not report["new"] and not report["unused"] and set(report["loaded"]) == {
        "video_tower", "action_tower", "caption_encoder", "time_head"}
    assert s2.step == 0
    train(s2)
    check_stage(s2, start2, {"action_tower", "time_head"}, all_change=False)

    # resume (sharded checkpoint holding frozen tensors, optimizer state of the trained ones)
    # continues exactly as the uninterrupted stage 2
    resumed = build(tmp_path, folder, "s2", "train.steps=4", f"model.init_from={tmp_path / 'runs' / 's1'}", *STAGE2)
    assert resumed.step == 2 and resumed.handoff is None  # the run's own checkpoint wins over init_from
    train(resumed)
    straight = build(tmp_path, folder, "s2-straight", "train.steps=4",
                     f"model.init_from={tmp_path / 'runs' / 's1'}", *STAGE2)
    train(straight)
    assert resumed.history["loss"] == straight.history["loss"]
    check_stage(straight, start2, {"action_tower", "time_head"})
    for n, v in weights(straight).items():
        assert torch.equal(v, weights(resumed)[n]), n


def test_init_from_an_export_and_its_errors(tmp_path, shard_writer):
    import subprocess
    import sys

    folder = shard_writer(tmp_path / "shards", LENGTHS)
    train(build(tmp_path, folder, "src", "train.steps=1", *STAGE1))
    export = tmp_path / "src.safetensors"
    done = subprocess.run([sys.executable, "-m", "wallwm_pretrain.export", "--ckpt", str(tmp_path / "runs" / "src"),
                           "--out", str(export)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    tensors = load_file(str(export))

    # from the export file and from the step folder: the same weights
    for source in (export, find_latest(tmp_path / "runs" / "src")):
        t = build(tmp_path, folder, f"from-{source.name}", "train.steps=1", f"model.init_from={source}")
        for n, v in weights(t).items():
            assert torch.equal(v, tensors[n]), n
        train(t)

    def variant(name, change):
        edited = dict(tensors)
        change(edited)
        path = tmp_path / f"{name}.safetensors"
        save_file(edited, str(path))
        return path

    def start(path, *extra):
        return set_up(tmp_path, folder, path.stem, "train.steps=1", f"model.init_from={path}", *extra)

    wrong = variant("wrong_shape", lambda t: t.__setitem__("layers.1.action.ffn.linear_fc1.weight", torch.zeros(3, 3)))
    with pytest.raises(CheckpointError, match=r"layers\.1\.action\.ffn\.linear_fc1\.weight: source \[3, 3\] vs model"):
        start(wrong)
    extra = variant("extra", lambda t: t.__setitem__("staircase.projector.weight", torch.zeros(2, 2)))
    with pytest.raises(CheckpointError, match=r"belong to no tensor of this model, e\.g\. \['staircase\.projector\.weight'\]"):
        start(extra)
    missing = variant("missing", lambda t: [t.pop(n) for n in list(t) if n.startswith("time_head.")])
    with pytest.raises(CheckpointError, match=r"not in the source, e\.g\. \['time_head\."):
        start(missing)
    # allowed when asked for, and reported by component
    fresh = start(missing, "model.init_from_partial=true")
    report = fresh.handoff
    assert set(report.new) == {"time_head"} and not report.unused
    built = weights(set_up(tmp_path, folder, "plain", "train.steps=1"))  # the same seed's fresh initialisation
    for n, v in weights(fresh).items():
        assert torch.equal(v, built[n] if n.startswith("time_head.") else tensors[n]), n


def test_stage_presets_on_the_5b_preset_and_the_recipes_load():
    from pathlib import Path

    from wallwm_pretrain.recipe.state import stage_state
    from wallwm_pretrain.recipe.spec import read_recipe

    root = Path(__file__).resolve().parents[1]
    base = root / "configs" / "wallwm_wan22_5b.yaml"
    video = load_config([base, root / "configs/stages/1_video.yaml"])
    assert video.model.video_tower == "wan" and video.model.num_layers == 30  # the size preset stays
    assert video.model.train_parts == ["video_tower"] and video.model.action_loss_weight == 0
    assert video.data.max_frames == 65 * 4  # 65 latent frames at K_p = 4
    action = load_config([base, root / "configs/stages/2_action.yaml"])
    assert action.model.train_parts == ["action_tower", "time_head"] and action.model.video_loss_weight == 0
    assert action.model.action_pretrain.mapping == "anchor" and action.model.action_pretrain.draws == 6
    cond = load_config([base, root / "configs/stages/3_conditioner.yaml"])
    assert cond.model.kind == "conditioner" and cond.data.mode == "conditioner"
    stair = load_config([base, root / "configs/stages/4_staircase.yaml"])
    assert stair.model.kind == "staircase" and stair.data.mode == "conditioner"
    chunk = load_config([base, root / "configs/stages/5_next_chunk.yaml"])
    assert chunk.data.mode == "unified" and chunk.model.context.sources == ["global", "staircase"]
    assert set(chunk.model.train_parts) == {"video_tower", "action_tower", "time_head", "context_projection"}
    # the heads and branch of stages 3 and 4 have the shapes their presets give them
    for field in ("hidden_size", "num_heads", "align_layers", "align_tokens"):
        assert getattr(chunk.model.conditioner, field) == getattr(cond.model.conditioner, field), field
    for field in ("latents", "relay_depth", "layer_group", "num_heads", "ffn_mult"):
        assert getattr(chunk.model.staircase, field) == getattr(stair.model.staircase, field), field
    for name in ("smoke", "wallwm_wan22_5b"):
        recipe = read_recipe(root / "configs" / "recipes" / f"{name}.yaml")
        assert [s.name for s in recipe.stages] == ["1_video", "2_action", "3_conditioner", "4_staircase", "5_next_chunk"]
        assert recipe.stage("2_action").init_from == "1_video" and not recipe.stage("3_conditioner").init_from
        assert recipe.stage("5_next_chunk").init_from == "2_action"
        assert recipe.stage("5_next_chunk").context_from == {"conditioner": "3_conditioner", "staircase": "4_staircase"}
        for stage in recipe.stages:  # every stage's config is valid
            stage_state(recipe, stage, [])


def test_a_switched_off_loss_of_a_frozen_tower_costs_no_backward():
    """Video pretraining: the action tower is frozen and its loss weighted 0, so backward never
    runs through it (a backward hook on its head and blocks never fires), and the video tower's
    gradients are those of the video loss alone."""
    from dataclasses import replace

    from wallwm_pretrain.batch import Batch
    from wallwm_pretrain.model import build_model
    from wallwm_pretrain.model.freeze import apply_train_parts

    cfg = ModelConfig(hidden_size=32, num_heads=2, ffn_hidden_size=64, image_size=16, patch_size=8,
                      train_parts=["video_tower", "caption_encoder"], action_loss_weight=0.0, time_loss_weight=0.0)
    g = torch.Generator().manual_seed(0)
    t = 8
    caption = torch.randint(2, 258, (2, 6), generator=g)
    batch = Batch(torch.randint(0, 256, (2, t, 2, 16, 16, 3), dtype=torch.uint8, generator=g),
                  torch.randn(2, t, cfg.action_dim, generator=g), torch.randn(2, cfg.state_dim, generator=g),
                  torch.tensor([t, 5]), caption)

    def grads(config):
        torch.manual_seed(0)
        model = build_model(config)
        apply_train_parts(model, config)
        fired = []
        for module in [model.action_out, *(layer.action for layer in model.layers.values())]:
            module.register_full_backward_hook(lambda *_: fired.append(1))
        out = model(batch, generator=torch.Generator().manual_seed(1))
        out["loss"].backward()
        return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, fired, out

    stage, fired, out = grads(cfg)
    assert not fired and out["loss_action"] > 0  # measured, not trained on
    alone, fired_in, _ = grads(replace(cfg, action_loss_weight=1e-30))  # the same graph with the action term in
    assert fired_in  # the hooks do see a backward through the action tower when its term is in
    for n, v in stage.items():
        torch.testing.assert_close(v, alone[n], rtol=1e-5, atol=1e-8)
