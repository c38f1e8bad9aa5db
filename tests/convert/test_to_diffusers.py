"""``convert to-diffusers``: the video tower back as a diffusers ``WanTransformer3DModel`` folder,
read by diffusers' own ``from_pretrained``.

* untouched: diffusers -> ``convert wan`` -> ``to-diffusers`` gives the same bytes and config;
* trained: a few steps of a two-view tiny Wan run, exported from its (sharded) checkpoint, gives
  the project's single-view video tower output within 1e-5 (fp32), the cross-view parts and the
  action tower written beside it and named in the report;
* a small-tower checkpoint fails with one line that says why.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from wallwm_pretrain.convert.__main__ import main as convert
from wallwm_pretrain.convert.tiny import make_tiny

ACTION = ["model.action_dim=4", "model.state_dim=8", "model.hidden_size=32", "model.num_heads=4",
          "model.ffn_hidden_size=64"]
DIFFUSERS = "diffusion_pytorch_model.safetensors"
SMOKE = Path(__file__).resolve().parents[2] / "configs" / "smoke.yaml"


def _folder_tensors(folder):
    out = {}
    for path in sorted(folder.glob("diffusion_pytorch_model*.safetensors")):
        out.update(load_file(path))
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny(tmp_path_factory.mktemp("to_diffusers") / "tiny", seed=0)["transformer"].parent


def test_untouched_tower_comes_back_bit_exact_and_sharded(tiny, tmp_path, capsys):
    from diffusers import WanTransformer3DModel

    src = tiny / "transformer"
    init, back = tmp_path / "init", tmp_path / "back"
    assert convert(["wan", "--src", str(src), "--out", str(init), *ACTION]) == 0
    assert convert(["to-diffusers", "--ckpt", str(init), "--out", str(back), "--max-shard-size", "20KB"]) == 0
    assert (back / f"{DIFFUSERS}.index.json").is_file() and len(list(back.glob("*.safetensors"))) > 1
    theirs, ours = load_file(src / DIFFUSERS), _folder_tensors(back)
    assert sorted(ours) == sorted(theirs)
    for name, tensor in theirs.items():  # the same bytes, dtype and shape
        assert ours[name].dtype == tensor.dtype and torch.equal(ours[name].view(torch.uint8), tensor.view(torch.uint8)), name
    assert json.loads((back / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    model = WanTransformer3DModel.from_pretrained(back)  # diffusers' own reader, sharded
    assert all(torch.equal(p, theirs[n]) for n, p in model.state_dict().items()), "from_pretrained"
    report = json.loads((back / "wallwm" / "report.json").read_text())
    assert sorted(report["diffusers"]) == sorted(theirs)
    init_weights = load_file(init / "model.safetensors")
    beside = load_file(back / "wallwm" / "action_tower.safetensors")
    assert sorted(beside) == sorted(n for n in init_weights if not n.startswith("video."))
    assert all(torch.equal(beside[n], init_weights[n]) for n in beside)
    assert not (back / "wallwm" / "video_multiview.safetensors").exists()  # one view: nothing grafted


def _latent_shards(tiny, folder, shard_writer):
    from data_tools.latents import encode_latents
    from data_tools.textstates import embed_captions

    shards = shard_writer(folder, [9, 12, 13, 8])
    encode_latents(shards, tiny / "vae", progress=False)
    embed_captions(shards, tiny / "text_encoder", progress=False)
    return shards


@pytest.fixture(scope="module")
def trained_wan(tiny, tmp_path_factory, shard_writer):
    """Three steps of a two-view tiny Wan run from the converted diffusers tower (sharded checkpoint, the default)."""
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    root = tmp_path_factory.mktemp("trained_wan")
    torch.set_num_threads(1)
    shards = _latent_shards(tiny, root / "shards", shard_writer)
    init = root / "init"
    assert convert(["wan", "--src", str(tiny / "transformer"), "--out", str(init), "--num-views", "2",
                    "model.video_input=latents", f"data.shards={shards}", *ACTION]) == 0
    cfg = load_config(init / "config.yaml", [f"model.init_from={init}", f"train.runs_root={root / 'runs'}",
                                             "train.run_name=wan", "train.device=cpu", "data.batch_size=2",
                                             "data.max_frames=12", "train.steps=3", "train.save_every=3",
                                             "optim.warmup_steps=1", "optim.lr=0.01"])
    try:
        Trainer(cfg).train()
    finally:
        shutdown_parallel()
    return init, root / "runs" / "wan"


def test_trained_tower_loads_in_diffusers_with_the_projects_single_view_output(trained_wan, tmp_path):
    from diffusers import WanTransformer3DModel

    from wallwm_pretrain.checkpoint.weights import read_model_source
    from wallwm_pretrain.config import config_from_stored
    from wallwm_pretrain.model.wan import WanTower
    from wallwm_pretrain.model.wan_wallwm import wan_config

    init, run = trained_wan
    out = tmp_path / "exported"
    assert convert(["to-diffusers", "--ckpt", str(run), "--out", str(out)]) == 0
    tensors, config_yaml, _ = read_model_source(run)
    start = load_file(init / "model.safetensors")
    assert not torch.equal(tensors["video.proj_out.weight"], start["video.proj_out.weight"])  # it did train

    wcfg = wan_config(config_from_stored(config_yaml).model)
    single = WanTower(replace(wcfg, num_views=1), seed=0).eval()
    video = {n.removeprefix("video."): t for n, t in tensors.items() if n.startswith("video.")}
    single.load_state_dict({n: t for n, t in video.items() if ".cross_view." not in n}, strict=True)
    theirs = WanTransformer3DModel.from_pretrained(out).eval()

    g = torch.Generator().manual_seed(3)
    latents = torch.randn(2, wcfg.in_channels, 3, 4, 6, generator=g)
    timestep = torch.tensor([250.0, 900.0])
    text = torch.randn(2, 7, wcfg.text_dim, generator=g)
    with torch.no_grad():
        expected = single(latents, timestep, text)
        got = theirs(hidden_states=latents, timestep=timestep, encoder_hidden_states=text, return_dict=False)[0]
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-5

    # the parts Wan has no place for are beside it, named in the report, equal to the checkpoint's
    grafted = load_file(out / "wallwm" / "video_multiview.safetensors")
    assert sorted(grafted) == sorted(n for n in tensors if ".cross_view." in n) and grafted
    assert all(torch.equal(grafted[n], tensors[n]) for n in grafted)
    assert any(torch.count_nonzero(grafted[n]) for n in grafted if n.endswith("linear_proj.weight"))  # trained
    report = json.loads((out / "wallwm" / "report.json").read_text())
    named = {e["name"]: e["file"] for e in report["beside"]}
    assert all(named[n] == "wallwm/video_multiview.safetensors" for n in grafted)
    assert sorted(report["diffusers"].values()) == sorted(n for n in tensors if n.startswith("video.")
                                                          and ".cross_view." not in n)
    assert set(named) | set(report["diffusers"].values()) == set(tensors)  # nothing dropped
    assert "cross_view" in (out / "wallwm" / "report.md").read_text()


def test_small_tower_checkpoint_gets_a_one_line_error(tmp_path, shard_writer, capsys):
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    shards = shard_writer(tmp_path / "shards", [8, 9, 12, 7])
    cfg = load_config(SMOKE, [f"data.shards={shards}", f"train.runs_root={tmp_path / 'runs'}",
                                             "train.run_name=small", "train.device=cpu", "data.batch_size=2",
                                             "train.steps=1", "train.save_every=1", "train.save_format=gathered",
                                             "model.hidden_size=32",
                                             "model.num_heads=2", "model.ffn_hidden_size=64", "model.num_layers=1"])
    try:
        Trainer(cfg).train()
    finally:
        shutdown_parallel()
    capsys.readouterr()
    out = tmp_path / "nowhere"
    assert convert(["to-diffusers", "--ckpt", str(tmp_path / "runs" / "small"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "small video tower" in err and "model.video_tower=wan" in err
    assert not out.exists()  # nothing written


def test_a_towers_checkpoint_is_not_taken_for_conditioner_heads(tiny, tmp_path, capsys):
    init = tmp_path / "init"
    assert convert(["wan", "--src", str(tiny / "transformer"), "--out", str(init), *ACTION]) == 0
    capsys.readouterr()
    assert convert(["to-diffusers", "--ckpt", str(init), "--out", str(tmp_path / "o"), "--conditioner", str(init)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not the text conditioner's heads" in err
