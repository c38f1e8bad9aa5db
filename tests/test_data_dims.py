"""The model's data dims come from the shards' index.json; a disagreeing value fails first."""

import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from wallwm_pretrain.config import ConfigError, load_config

TINY = [
    "model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.ffn_hidden_size=64",
    "model.patch_size=8", "data.batch_size=2", "data.max_frames=8", "data.shuffle_buffer=0",
    "train.log_every=1", "optim.warmup_steps=1", "tracking.enabled=false",
]
# unlike the schema's standalone defaults (4 actions, 8 states, 2 views, 32 px)
DIMS = dict(action_dim=7, state_dim=5, views=3, size=16)


def test_auto_dims_train_and_are_saved_in_the_run_folder(tmp_path, shard_writer):
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    folder = shard_writer(tmp_path / "shards", [8] * 4, **DIMS)
    cfg = load_config(None, TINY + [f"data.shards={folder}", f"train.runs_root={tmp_path / 'runs'}", "train.steps=1"])
    try:
        summary = Trainer(cfg).train()
    finally:
        shutdown_parallel()
    assert summary.end_step == 1
    saved = OmegaConf.load(tmp_path / "runs" / "smoke" / "config.yaml").model
    assert (saved.action_dim, saved.state_dim, saved.num_views, saved.image_size) == (7, 5, 3, 16)


@pytest.mark.parametrize("key, value, found", [("action_dim", 4, 7), ("state_dim", 8, 5), ("num_views", 2, 3),
                                               ("image_size", 32, 16)])
def test_an_explicit_dim_that_disagrees_names_both_numbers_and_the_folder(tmp_path, shard_writer, key, value, found):
    from wallwm_pretrain.data.dims import resolve_data_dims

    folder = shard_writer(tmp_path / "shards", [8] * 4, **DIMS)
    cfg = load_config(None, TINY + [f"data.shards={folder}", f"model.{key}={value}"])
    with pytest.raises(ConfigError) as err:
        resolve_data_dims(cfg)
    assert str(err.value) == (
        f"model.{key}={value} but the shards in {folder} have {key} {found} (index.json); "
        f"set model.{key}={found} or auto"
    )


def test_an_agreeing_explicit_dim_is_kept(tmp_path, shard_writer):
    from wallwm_pretrain.data.dims import resolve_data_dims

    folder = shard_writer(tmp_path / "shards", [8] * 4, **DIMS)
    cfg = resolve_data_dims(load_config(None, TINY + [f"data.shards={folder}", "model.action_dim=7"]))
    assert (cfg.model.action_dim, cfg.model.state_dim) == (7, 5)


def test_the_cli_fails_before_any_work_on_a_disagreeing_dim(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", [8] * 4, **DIMS)
    runs = tmp_path / "runs"
    out = subprocess.run(
        [sys.executable, "-m", "wallwm_pretrain.train", *TINY, f"data.shards={folder}", f"train.runs_root={runs}",
         "model.state_dim=8"], capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        f"error: model.state_dim=8 but the shards in {folder} have state_dim 5 (index.json); "
        "set model.state_dim=5 or auto"
    ]
    assert not runs.exists()
