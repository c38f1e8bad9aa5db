"""The offline merge (``python -m wallwm_pretrain.checkpoint merge``): a sharded checkpoint of a
model and its stepped optimizer, written in the gathered layout, holds exactly the same state,
and that state loads back into a fresh optimizer through the one pieces interface."""

import subprocess
import sys

import pytest
import torch

from wallwm_pretrain.checkpoint import CheckpointError, folders, store
from wallwm_pretrain.checkpoint.__main__ import main
from wallwm_pretrain.checkpoint.merge import merge_checkpoint
from wallwm_pretrain.checkpoint.optim import as_source, optimizer_pieces
from wallwm_pretrain.checkpoint.pieces import Piece
from wallwm_pretrain.config import OptimConfig
from wallwm_pretrain.optim import ReplicatedOptimizerSet, split_parameters

CONFIG_YAML = "train:\n  steps: 3\n"


def _trained(steps=3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Linear(6, 3))
    cfg = OptimConfig(lr=0.02, adamw_lr=0.003, warmup_steps=1)
    opt = ReplicatedOptimizerSet(dict(model.named_parameters()), split_parameters(model), cfg, 10, "float32")
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        opt.zero_grad()
    return model, opt


def _sharded(run_dir, model, opt, step=3):
    state = model.state_dict()
    structure, optim_pieces = optimizer_pieces(opt).save()
    pieces = [Piece(n, tuple(t.shape), [0] * t.dim(), t.detach()) for n, t in state.items()] + optim_pieces
    stage = {"stages": [(0, list(state))], "extra": {}, "optimizer": structure}
    tmp, final = store.begin_sharded_save(run_dir, step, rank=0, world=1)
    return store.finish_sharded_save(tmp, final, rank=0, world=1, pieces=pieces, stage=stage,
                                     trainer={"step": step}, config_yaml=CONFIG_YAML)


def _same(got, want, path="state"):
    if isinstance(want, torch.Tensor):
        assert torch.equal(got, want), path
    elif isinstance(want, dict):
        assert set(got) == set(want), f"{path}: {sorted(got)} vs {sorted(want)}"
        for k in want:
            _same(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (x, y) in enumerate(zip(got, want)):
            _same(x, y, f"{path}[{i}]")
    else:
        assert got == want, f"{path}: {got!r} vs {want!r}"


def test_the_merge_writes_the_sharded_state_in_the_gathered_layout(tmp_path, capsys):
    model, opt = _trained()
    sharded = _sharded(tmp_path / "run", model, opt)
    assert main(["merge", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 0
    gathered = tmp_path / "out" / "checkpoints" / "step_00000003"
    assert capsys.readouterr().out.strip() == str(gathered)
    assert (gathered / "model.safetensors").is_file() and not folders.is_sharded(gathered)
    merged, source = store.load_checkpoint(gathered), store.load_checkpoint(sharded)
    assert (merged.step, merged.trainer, merged.config_yaml) == (3, {"step": 3}, CONFIG_YAML)
    _same(merged.model, model.state_dict())
    _same(merged.model, source.model)
    _same(merged.optimizer, opt.state_dict())  # the single-process state, built from the pieces
    # and back: a fresh set takes the gathered state through the same pieces interface
    _, fresh = _trained(steps=0)
    optimizer_pieces(fresh).load(*as_source(merged.optimizer))
    _same(fresh.state_dict(), opt.state_dict())


def test_a_merge_into_its_own_run_replaces_the_sharded_step(tmp_path):
    model, opt = _trained()
    folder = _sharded(tmp_path, model, opt)
    assert merge_checkpoint(folder, tmp_path) == folder
    assert not folders.is_sharded(folder) and folders.list_checkpoints(tmp_path) == [(3, folder)]
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no scratch or replaced folder left
    _same(store.load_checkpoint(folder).optimizer, opt.state_dict())


def test_the_merge_names_what_it_cannot_take(tmp_path, capsys):
    model, opt = _trained(steps=1)
    folder = _sharded(tmp_path / "run", model, opt, step=1)
    merge_checkpoint(folder, tmp_path / "run")
    with pytest.raises(CheckpointError, match="already a gathered checkpoint"):
        merge_checkpoint(folder, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    assert main(["merge", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "neither a checkpoint folder nor a run folder with a complete checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_command_line_explains_itself():
    out = subprocess.run([sys.executable, "-m", "wallwm_pretrain.checkpoint", "merge", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "RUN_OR_STEP" in out and "--out RUN_DIR" in out and "gathered layout" in out
