from pathlib import Path

import pytest

from wallwm_pretrain.config import ConfigError, flatten, load_config, to_yaml


def test_defaults_and_override():
    cfg = load_config(None, ["train.steps=7", "optim.lr=0.5", "data.caption_drop.l_max=300"])
    assert cfg.train.steps == 7 and cfg.optim.lr == 0.5 and cfg.data.caption_drop.l_max == 300


def test_smoke_preset_loads():
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")  # any working directory
    assert cfg.data.shards == "data/shards/smoke" and cfg.train.run_name == "smoke"


@pytest.mark.parametrize(
    "override, nearest",
    [("train.stepz=3", "train.steps"), ("train.lr=1", "optim.lr"), ("datta.seed=1", "data.seed"),
     ("optim.weight_decey=0", "optim.weight_decay")],
)
def test_unknown_override_names_nearest_key(override, nearest):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"'{override.split('=')[0]}'" in str(err.value)
    assert f"did you mean '{nearest}'" in str(err.value)


def test_unknown_yaml_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hiden_size: 64\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown config key 'model\.hiden_size'; did you mean 'model\.hidden_size'"):
        load_config(path)


def test_wrong_type_fails():
    with pytest.raises(ConfigError, match="train.steps"):
        load_config(None, ["train.steps=many"])


@pytest.mark.parametrize(
    "overrides, fragment",
    [(["model.num_heads=3"], "divisible by model.num_heads"),
     (["data.caption_drop.rho_min=0.95"], "rho_min <= rho_max"),
     (["data.mode=chunk", "data.chunk_horizon=10"], "multiple of model.frame_stride"),
     (["data.max_frames=30"], "multiple of model.frame_stride"),
     (["optim.ns_dtype=fp8"], "optim.ns_dtype"),
     (["optim.muon_reduce=reduce_scatter"], "optim.muon_reduce must be home or all_reduce"),
     (["optim.muon_tp_ns=pieces"], "optim.muon_tp_ns must be gather, sharded or sharded_all"),
     (["optim.ns_variant=syrk"], "optim.ns_variant must be quintic, polar_express or gram"),
     (["model.video_loss_weight=-1"], r"model\.video_loss_weight must be >= 0, got -1"),
     (["model.action_loss_weight=-0.5"], r"model\.action_loss_weight must be >= 0, got -0\.5")],
)
def test_bad_combinations_fail(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, overrides)


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.steps"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["model.hidden_size=64", "train.run_name=x"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg
    assert flatten(cfg)["model.hidden_size"] == 64


@pytest.mark.parametrize("old, new", [("data.frame_stride", "model.frame_stride"),
                                      ("data.caption_max_bytes", "model.caption_max_bytes"),
                                      ("model.mode", "data.mode"), ("model.chunk_horizon", "data.chunk_horizon")])
def test_moved_keys_fail_naming_their_new_place(tmp_path, old, new):
    value = "chunk" if old.endswith("mode") else "4"
    with pytest.raises(ConfigError, match=f"{old} is now {new}"):
        load_config(None, [f"{old}={value}"])
    section, key = old.split(".")
    preset = tmp_path / "old.yaml"
    preset.write_text(f"{section}:\n  {key}: {value}\n")
    with pytest.raises(ConfigError, match=f"old.yaml: {old} is now {new}"):
        load_config(preset)


def test_a_stored_config_from_before_the_move_is_translated():
    from wallwm_pretrain.config import config_from_stored

    old = "data:\n  frame_stride: 2\n  caption_max_bytes: 20\nmodel:\n  mode: chunk\n  chunk_horizon: 8\n"
    cfg = config_from_stored(old)
    assert (cfg.model.frame_stride, cfg.model.caption_max_bytes) == (2, 20)
    assert (cfg.data.mode, cfg.data.chunk_horizon) == ("chunk", 8)
    # a config written after the move reads as it is
    assert config_from_stored(to_yaml(cfg)) == cfg
