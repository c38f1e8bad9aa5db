"""One Wan schema: the shape fields are defined once (``config/wan.py``), the model's WanConfig
adds only the depth and the grafted multi-view fields, the defaults are Wan2.2 TI2V-5B's, and a
diffusers config.json that omits a key gets diffusers' own default, not the preset's."""

from __future__ import annotations

from dataclasses import fields

from wallwm_pretrain.config import WanTowerConfig, load_config
from wallwm_pretrain.model.wan import WanConfig

# Wan2.2 TI2V-5B's published transformer config, written out by hand
TI2V_5B = {"patch_size": [1, 2, 2], "num_attention_heads": 24, "attention_head_dim": 128, "in_channels": 48,
           "out_channels": 48, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 14336, "cross_attn_norm": True,
           "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}
# diffusers' WanTransformer3DModel constructor defaults (Wan2.1 T2V-14B's shape), written out by hand
DIFFUSERS_DEFAULTS = {"num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 16, "out_channels": 16,
                      "ffn_dim": 13824, "num_layers": 40}


def test_the_model_config_adds_only_depth_and_grafted_fields():
    schema = [f.name for f in fields(WanTowerConfig)]
    model = [f.name for f in fields(WanConfig)]
    assert model[: len(schema)] == schema
    assert model[len(schema):] == ["num_layers", "num_views", "init_std"]
    assert WanConfig.__dataclass_fields__["ffn_dim"] is WanTowerConfig.__dataclass_fields__["ffn_dim"]  # inherited


def test_defaults_are_ti2v_5b_in_the_schema_the_model_and_a_run_config():
    shape = WanTowerConfig()
    assert {f.name: getattr(shape, f.name) for f in fields(WanTowerConfig)} == TI2V_5B
    tower = WanConfig()
    assert tower.hidden_size == 3072 and tower.num_layers == 30 and tower.patch_size == (1, 2, 2)
    assert load_config().model.wan == shape


def test_a_config_json_without_a_key_takes_diffusers_default():
    tower = WanConfig.from_diffusers({"_class_name": "WanTransformer3DModel"})
    for key, value in DIFFUSERS_DEFAULTS.items():
        assert getattr(tower, key) == value, key
    tower = WanConfig.from_diffusers({"num_attention_heads": 2, "attention_head_dim": 8, "ffn_dim": 16,
                                      "num_layers": 1, "in_channels": 4, "out_channels": None}, num_views=2)
    assert (tower.num_attention_heads, tower.ffn_dim, tower.num_layers, tower.out_channels, tower.text_dim) == (
        2, 16, 1, 4, 4096)
    assert tower.num_views == 2 and "num_views" not in tower.diffusers_config()


def test_schema_and_model_config_convert_both_ways():
    tower = WanConfig(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, text_dim=8,
                      freq_dim=8, ffn_dim=16, num_layers=3, num_views=2, init_std=0.01)
    shape = tower.shape()
    assert isinstance(shape, WanTowerConfig) and not isinstance(shape, WanConfig) and shape.patch_size == [1, 2, 2]
    assert WanConfig.from_schema(shape, num_layers=3, num_views=2, init_std=0.01) == tower


def test_bad_shapes_name_the_file():
    import pytest

    with pytest.raises(ValueError, match=r"my/config.json: .*ffn_dim must be >= 1, got 0"):
        WanConfig.from_diffusers({"ffn_dim": 0}, "my/config.json")
    with pytest.raises(ValueError, match=r"my/config.json: num_layers must be >= 1, got 0"):
        WanConfig.from_diffusers({"num_layers": 0}, "my/config.json")
