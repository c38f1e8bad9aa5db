"""``convert wan``: the whole model's starting weights from the make-tiny diffusers transformer,
and a run that starts from them (``model.init_from``) holds the checkpoint's video tower."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from wallwm_pretrain.config import load_config
from wallwm_pretrain.convert.__main__ import main
from wallwm_pretrain.convert.tiny import make_tiny
from wallwm_pretrain.model.wan.from_diffusers import tower_name

ACTION = ["model.action_dim=4", "model.state_dim=8", "model.hidden_size=32", "model.num_heads=4",
          "model.ffn_hidden_size=64"]
DIFFUSERS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("wan_convert")
    src = make_tiny(root / "tiny")["transformer"]
    out = root / "init"
    assert main(["wan", "--src", str(src), "--out", str(out), "--num-views", "2", *ACTION]) == 0
    return src, out


def test_report_maps_every_diffusers_tensor_and_lists_the_new_parts(converted):
    src, out = converted
    diffusers = load_file(src / DIFFUSERS)
    report = json.loads((out / "report.json").read_text())
    weights = load_file(out / "model.safetensors")
    assert sorted(report["mapped"].values()) == sorted(diffusers) and report["unused"] == []
    assert sorted(report["mapped"]) + sorted(report["new"]) == sorted(report["mapped"]) + sorted(set(weights) - set(report["mapped"]))
    assert any(n.startswith("action_layers.") for n in report["new"])
    assert any(".cross_view." in n for n in report["new"])
    for ours, theirs in report["mapped"].items():
        assert ours == "video." + tower_name(theirs)
        assert torch.equal(weights[ours], diffusers[theirs]), ours
    out_proj = [n for n in weights if ".cross_view." in n and "linear_proj.weight" in n]
    assert out_proj and all(torch.count_nonzero(weights[n]) == 0 for n in out_proj)  # W_view = 0 at the start
    cfg = load_config(out / "config.yaml")
    assert cfg.model.video_tower == "wan" and cfg.model.num_layers == 2 and cfg.model.num_views == 2


def test_a_run_started_from_it_holds_the_diffusers_video_tower(converted, tmp_path, shard_writer):
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    src, out = converted
    shards = shard_writer(tmp_path / "shards", [8, 9, 12, 7])
    cfg = load_config(out / "config.yaml", [f"model.init_from={out}", f"data.shards={shards}", "data.batch_size=2",
                                             f"train.runs_root={tmp_path / 'runs'}", "train.device=cpu"])
    trainer = Trainer(cfg)
    try:
        assert trainer.step == 0 and trainer.resumed_from == ""
        params = {n: p.detach() for c in trainer.chunks for n, p in c.named_parameters()}
        diffusers = load_file(src / DIFFUSERS)
        for name, tensor in diffusers.items():
            assert torch.equal(params["video." + tower_name(name)], tensor), name
        weights = load_file(out / "model.safetensors")
        for name, p in params.items():  # the fresh parts too are the file's, not redrawn
            assert torch.equal(p, weights[name]), name
    finally:
        trainer.close()
        shutdown_parallel()


def test_init_from_weights_of_another_model_fails_naming_a_tensor(converted, tmp_path, shard_writer):
    from wallwm_pretrain.checkpoint import CheckpointError
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    _, out = converted
    other = tmp_path / "other"
    shutil.copytree(out, other)
    weights = load_file(other / "model.safetensors")
    weights["action_layers.9.coupling.weight"] = torch.zeros(2, 2)
    save_file(weights, other / "model.safetensors")
    shards = shard_writer(tmp_path / "shards", [8, 9, 12, 7])
    cfg = load_config(out / "config.yaml", [f"model.init_from={other}", f"data.shards={shards}", "data.batch_size=2",
                                             f"train.runs_root={tmp_path / 'runs'}", "train.device=cpu"])
    try:
        with pytest.raises(CheckpointError, match="action_layers.9.coupling.weight"):
            Trainer(cfg)
    finally:
        shutdown_parallel()


def test_unused_checkpoint_tensor_is_an_error_unless_allowed(converted, tmp_path, capsys):
    src, _ = converted
    extra = tmp_path / "extra"
    shutil.copytree(src, extra)
    state = load_file(extra / DIFFUSERS)
    state["blocks.0.attn1.extra_gate"] = torch.ones(3)
    save_file(state, extra / DIFFUSERS)
    assert main(["wan", "--src", str(extra), "--out", str(tmp_path / "a"), *ACTION]) == 1
    assert "blocks.0.attn1.extra_gate" in capsys.readouterr().err
    assert main(["wan", "--src", str(extra), "--out", str(tmp_path / "b"), "--allow-unused", *ACTION]) == 0
    assert json.loads((tmp_path / "b" / "report.json").read_text())["unused"] == ["blocks.0.attn1.extra_gate"]


def test_missing_folder_and_missing_data_dims_fail_with_one_line(tmp_path, converted, capsys):
    src, _ = converted
    assert main(["wan", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), *ACTION]) == 1
    assert "config.json" in capsys.readouterr().err
    assert main(["wan", "--src", str(src), "--out", str(tmp_path / "o")]) == 1
    assert "model.action_dim" in capsys.readouterr().err
