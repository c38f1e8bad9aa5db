"""The store's sharded save in one process (world 1): the scratch folder, the commit, retention
and every loader of the layout. The multi-rank cases are in tests/parallel/test_sharded_checkpoint.py."""

import json
import re

import pytest
import torch

from wallwm_pretrain.checkpoint import CheckpointError, folders, store
from wallwm_pretrain.checkpoint.pieces import Piece

CONFIG_YAML = "train:\n  steps: 5\n"


def model_tensors(step):
    return {"w": torch.arange(6.0).view(2, 3) + step, "b": torch.tensor([1.0, -2.0]) * step}


def sharded_save(run_dir, step, trainer=None, **retention):
    """A one-rank sharded save of step ``step``; ``retention``: keep_last / keep_every, if given."""
    tensors = model_tensors(step)
    pieces = [Piece(name, tuple(t.shape), [0] * t.dim(), t) for name, t in tensors.items()]
    stage = {"stages": [(0, ["w", "b", "norm._extra_state"])], "extra": {"norm._extra_state": None}, "optimizer": None}
    tmp, final = store.begin_sharded_save(run_dir, step, rank=0, world=1)
    assert tmp.is_dir() and tmp.parent == final.parent == run_dir / "checkpoints"
    assert re.fullmatch(rf"\.tmp-step_{step:08d}-[0-9a-f]{{8}}", tmp.name) and final.name == f"step_{step:08d}"
    out = store.finish_sharded_save(tmp, final, rank=0, world=1, pieces=pieces, stage=stage,
                                    trainer=trainer if trainer is not None else {"step": step, "ema": 0.5},
                                    config_yaml=CONFIG_YAML, **retention)
    assert out == final and not tmp.exists()
    return final


def test_a_one_rank_sharded_save_loads_through_every_reader(tmp_path):
    folder = sharded_save(tmp_path, 7)
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml", "index.json", "manifest.json", "rank00000.safetensors", "trainer.json", "trainer.safetensors"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (manifest["format_version"], manifest["layout"], manifest["step"]) == (2, "sharded", 7)
    assert folders.is_sharded(folder) and folders.is_complete(folder)
    assert folders.find_latest(tmp_path) == folder and folders.list_checkpoints(tmp_path) == [(7, folder)]

    expected = {**model_tensors(7), "norm._extra_state": None}
    ckpt = store.load_checkpoint(folder)
    assert (ckpt.step, ckpt.trainer, ckpt.config_yaml, ckpt.path) == (7, {"step": 7, "ema": 0.5}, CONFIG_YAML, folder)
    assert list(ckpt.model) == ["w", "b", "norm._extra_state"] and ckpt.optimizer is None
    for name in ("w", "b"):
        assert torch.equal(ckpt.model[name], expected[name])
    assert ckpt.model["norm._extra_state"] is None

    step, model, config = store.load_model_state(folder)
    assert (step, list(model), config) == (7, ["w", "b", "norm._extra_state"], CONFIG_YAML)
    assert torch.equal(model["w"], expected["w"])
    assert store.load_trainer_state(folder) == ({"step": 7, "ema": 0.5}, CONFIG_YAML)
    assert torch.equal(store.sharded_reader(folder).read_whole("b"), expected["b"])


def test_sharded_and_gathered_folders_are_told_apart(tmp_path):
    sharded = sharded_save(tmp_path / "a", 3)
    gathered = store.save_checkpoint(tmp_path / "b", 3, model={"w": torch.ones(2)}, optimizer={"state": {}, "param_groups": []},
                                     trainer={"step": 3}, config_yaml=CONFIG_YAML, keep_last=0)
    assert folders.is_sharded(sharded) and not folders.is_sharded(gathered)
    with pytest.raises(CheckpointError, match=r"not a sharded checkpoint \(layout 'gathered'\)"):
        store.sharded_reader(gathered)
    step, model, config = store.load_model_state(gathered)
    assert (step, list(model), config) == (3, ["w"], CONFIG_YAML) and torch.equal(model["w"], torch.ones(2))
    assert store.load_trainer_state(gathered) == ({"step": 3}, CONFIG_YAML)


def test_a_flipped_piece_byte_fails_naming_the_file(tmp_path):
    folder = sharded_save(tmp_path, 2)
    path = folder / "rank00000.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the last tensor byte: the header still parses
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="rank00000.safetensors"):
        store.load_checkpoint(folder)
    assert torch.equal(store.load_checkpoint(folder, verify=False).model["w"].flatten()[:5],
                       model_tensors(2)["w"].flatten()[:5])


def test_the_sharded_reader_checks_the_trainer_files_by_default(tmp_path):
    folder = sharded_save(tmp_path, 0)  # step 0: a save before the first step is a checkpoint too
    path = folder / "trainer.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="trainer.safetensors"):
        store.sharded_reader(folder)
    assert store.sharded_reader(folder, verify=False).read_whole("b").shape == (2,)


def test_sharded_retention_has_no_milestones_by_default(tmp_path):
    for step in (1, 2):
        sharded_save(tmp_path, step, keep_last=1)
    assert [s for s, _ in folders.list_checkpoints(tmp_path)] == [2]


def test_sharded_saves_keep_the_newest_and_the_milestones(tmp_path):
    for step in range(1, 8):
        sharded_save(tmp_path, step, keep_last=2, keep_every=3)
    # milestones 3 and 6 are kept and not counted; of 1, 2, 4, 5, 7 the newest two stay
    assert [s for s, _ in folders.list_checkpoints(tmp_path)] == [3, 5, 6, 7]
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_failed_sharded_commit_leaves_no_folder(tmp_path):
    sharded_save(tmp_path, 1)
    with pytest.raises(CheckpointError, match="cannot save trainer state"):
        sharded_save(tmp_path, 2, trainer={"bad": object()})
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000001"]


@pytest.mark.parametrize("step", [-1, 2.0, "3", True])
def test_a_sharded_save_needs_an_int_step(tmp_path, step):
    with pytest.raises(CheckpointError, match=r"checkpoint step must be an int >= 0, got"):
        store.begin_sharded_save(tmp_path, step, rank=0, world=1)
    assert not (tmp_path / "checkpoints").exists()
