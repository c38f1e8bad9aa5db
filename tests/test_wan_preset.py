"""configs/wallwm_wan22_5b.yaml: the Wan2.2 TI2V-5B video tower (its published config) with a
same-depth action tower; its video tower has exactly diffusers' parameters (meta device)."""

import torch

from wallwm_pretrain.config import load_config
from wallwm_pretrain.model import WanWallWM, build_model

PRESET = "configs/wallwm_wan22_5b.yaml"
DIMS = ["model.action_dim=7", "model.state_dim=8", "model.num_views=1", "model.image_size=32"]


def test_preset_is_the_published_ti2v_5b_tower_with_a_same_depth_action_tower():
    from diffusers import WanTransformer3DModel

    cfg = load_config(PRESET, DIMS)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = build_model(cfg.model)
        reference = WanTransformer3DModel(**model.wan.diffusers_config())
    assert isinstance(model, WanWallWM) and cfg.model.video_time_shift == 5.0
    w = model.wan
    assert (w.hidden_size, w.num_attention_heads, w.ffn_dim, w.num_layers, w.in_channels, w.text_dim) == (
        3072, 24, 14336, 30, 48, 4096)
    assert len(model.action_layers) == 30
    counts = model.parameter_counts()
    assert counts["video_tower"] == sum(p.numel() for p in reference.parameters()) == 4_999_787_712
    assert counts["total"] == counts["video_tower"] + counts["action_tower"] + counts["conditioning"]


def test_the_plan_covers_the_wan_path(capsys):
    from wallwm_pretrain.plan.__main__ import main

    args = ["--config", PRESET, "--gpus", "8", "parallel.tp=2", "--latent-size", "44x80", *DIMS]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "video_tower 5.000B" in out and "8 ranks = TP 2 x PP 1 x CP 1 x DP 4" in out
    assert main(["--config", PRESET, *DIMS]) == 2  # no latent size: one line naming the option
    assert "--latent-size" in capsys.readouterr().err
