"""Checkpoint folders: exact round trip, bit-identical resume, atomicity, corruption, retention."""

import io
import json
import os
import random

import numpy as np
import pytest
import torch

from wallwm_pretrain.checkpoint import (
    CheckpointError,
    find_latest,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from wallwm_pretrain.checkpoint import folders, store

CONFIG_YAML = "train:\n  steps: 5\n"


def assert_same(a, b, path="root"):
    """Equal values of exactly the same types, recursively (tensors: dtype, shape, bits)."""
    assert type(a) is type(b), f"{path}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}/{i}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def make_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def train_steps(model, opt, n):
    """n AdamW steps on data drawn from the global torch RNG (so RNG restore matters too)."""
    for _ in range(n):
        x, y = torch.randn(5, 6), torch.randn(5, 3)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def trainer_state(step):
    return {
        "step": step,
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "loader": {"epoch": 1, "offsets": (3, 7), "last": None},
        "loss_ema": 0.25,
    }


def save(run_dir, step, keep_last=0, **kw):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    args = dict(
        model=model.state_dict(),
        optimizer=opt.state_dict(),
        trainer={"step": step},
        config_yaml=CONFIG_YAML,
        keep_last=keep_last,
    )
    args.update(kw)
    return save_checkpoint(run_dir, step, **args)


def test_round_trip_is_exact(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    train_steps(model, opt, 2)
    np.random.seed(4)
    trainer = trainer_state(2)
    path = save_checkpoint(
        tmp_path, 2, model=model.state_dict(), optimizer=opt.state_dict(), trainer=trainer,
        config_yaml=CONFIG_YAML, keep_last=2,
    )
    assert path == tmp_path / "checkpoints" / "step_00000002"
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["model.safetensors", "optimizer.safetensors", "optimizer.json", "trainer.safetensors",
         "trainer.json", "config.yaml", "manifest.json"]
    )
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 2 and manifest["format_version"] == 1 and manifest["created"]
    assert set(manifest["files"]) == {p.name for p in path.iterdir()} - {"manifest.json"}
    assert all(len(e["sha256"]) == 64 and e["size"] > 0 for e in manifest["files"].values())

    ckpt = load_checkpoint(path)
    assert ckpt.step == 2 and ckpt.config_yaml == CONFIG_YAML and ckpt.path == path
    assert_same(ckpt.model, dict(model.state_dict()))
    assert_same(ckpt.optimizer, opt.state_dict())
    assert type(ckpt.optimizer["param_groups"][0]["betas"]) is tuple
    assert set(ckpt.optimizer["state"]) == {0, 1, 2, 3}  # int keys survive JSON
    assert_same(ckpt.trainer, trainer)


def test_resume_from_checkpoint_is_bit_identical(tmp_path):
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    torch.manual_seed(123)
    train_steps(model, opt, 2)
    save_checkpoint(
        tmp_path, 2, model=model.state_dict(), optimizer=opt.state_dict(),
        trainer=trainer_state(2), config_yaml=CONFIG_YAML, keep_last=1,
    )
    train_steps(model, opt, 3)  # the uninterrupted run

    ckpt = load_checkpoint(find_latest(tmp_path))
    resumed = make_model(seed=99)  # different init: everything must come from the checkpoint
    resumed.load_state_dict(ckpt.model)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2, weight_decay=0.1)
    resumed_opt.load_state_dict(ckpt.optimizer)
    torch.set_rng_state(ckpt.trainer["torch_rng"])
    train_steps(resumed, resumed_opt, 3)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)

    # Sensitivity check: without the optimizer state the continuation differs.
    fresh = make_model(seed=99)
    fresh.load_state_dict(ckpt.model)
    torch.set_rng_state(ckpt.trainer["torch_rng"])
    train_steps(fresh, torch.optim.AdamW(fresh.parameters(), lr=1e-2, weight_decay=0.1), 3)
    assert not all(torch.equal(p, q) for p, q in zip(model.parameters(), fresh.parameters()))


def test_tied_and_non_contiguous_model_tensors(tmp_path):
    emb = torch.randn(10, 4)
    model = {"embed.weight": emb, "head.weight": emb, "proj.t": torch.randn(4, 6).t(),
             "slice": emb[2:5]}
    path = save(tmp_path, 1, model=model)
    out = load_checkpoint(path).model
    for k, v in model.items():
        assert torch.equal(out[k], v) and out[k].shape == v.shape
    assert out["embed.weight"].data_ptr() != out["head.weight"].data_ptr()


def test_model_extra_state_entries_keep_place_and_value(tmp_path):
    # megatron-core layers put "<layer>._extra_state" (None, or bytes in a BytesIO) beside tensors.
    model = {"a.weight": torch.ones(2), "a._extra_state": None, "b.weight": torch.zeros(3),
             "b._extra_state": io.BytesIO(b"te-meta")}
    out = load_checkpoint(save(tmp_path, 1, model=model)).model
    assert list(out) == list(model)
    assert out["a._extra_state"] is None and out["b._extra_state"].getvalue() == b"te-meta"
    assert torch.equal(out["b.weight"], model["b.weight"])
    with pytest.raises(CheckpointError, match="flat"):
        save(tmp_path, 2, model={"x": [torch.ones(1)]})
    with pytest.raises(CheckpointError, match="keys must be str"):
        save(tmp_path, 2, model={0: torch.ones(1)})


def test_find_latest_ignores_temp_and_incomplete_folders(tmp_path):
    assert find_latest(tmp_path) is None
    first = save(tmp_path, 100)
    root = tmp_path / "checkpoints"
    # A complete save killed before its rename: everything is there, under a temp name.
    os.rename(save(tmp_path, 300), root / ".tmp-step_00000300-dead")
    # Newer real checkpoints, each damaged in one way.
    lost_file = save(tmp_path, 200)
    (lost_file / "optimizer.json").unlink()
    no_manifest = save(tmp_path, 250)
    (no_manifest / "manifest.json").unlink()
    truncated = save(tmp_path, 260)
    with open(truncated / "model.safetensors", "r+b") as f:
        f.truncate(10)
    renamed = save(tmp_path, 270)  # a folder whose name disagrees with its manifest
    os.rename(renamed, root / "step_00000280")
    assert find_latest(tmp_path) == first
    for folder, reason in [
        (lost_file, "optimizer.json: listed in the manifest but missing"),
        (no_manifest, "no manifest.json"),
        (truncated, "model.safetensors: size 10 bytes"),
        (root / "step_00000280", "does not match manifest step 270"),
    ]:
        with pytest.raises(CheckpointError, match=reason):
            load_checkpoint(folder)

    # The next successful save drops the leftover temp folder.
    save(tmp_path, 400)
    assert not list(root.glob(".tmp-*"))
    assert find_latest(tmp_path).name == "step_00000400"


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.json", "trainer.safetensors"])
def test_flipped_byte_is_reported_with_the_file_name(tmp_path, name):
    path = save(tmp_path, 5)
    file = path / name
    data = bytearray(file.read_bytes())
    data[len(data) // 2 + 3] ^= 0x01
    file.write_bytes(bytes(data))
    assert find_latest(tmp_path) == path  # same size: only the hash can tell
    with pytest.raises(CheckpointError, match=f"{name}.*sha256 mismatch"):
        load_checkpoint(path)


def test_keep_last_retention(tmp_path):
    for step in (100, 200, 300, 400, 500):
        save(tmp_path, step, keep_last=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000400", "step_00000500"]

    # The checkpoint just written survives even when newer ones exist (resumed from older).
    save(tmp_path, 150, keep_last=1)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000150", "step_00000500"]

    keep_all = tmp_path / "all"
    for step in (1, 2, 3):
        save(keep_all, step, keep_last=0)
    assert len(list((keep_all / "checkpoints").iterdir())) == 3


def test_milestones_are_kept_beside_the_newest(tmp_path):
    """keep_every: multiples of 200 survive pruning and do not count against keep_last."""
    for step in (100, 200, 300, 400, 500, 600, 700):
        save(tmp_path, step, keep_last=2, keep_every=200)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step_00000200", "step_00000400", "step_00000500", "step_00000600", "step_00000700"]


def test_same_step_is_replaced(tmp_path):
    save(tmp_path, 7, trainer={"version": "old"})
    path = save(tmp_path, 7, trainer={"version": "new"})
    assert load_checkpoint(path).trainer == {"version": "new"}
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000007"]


def test_resolve_resume(tmp_path):
    assert resolve_resume(tmp_path, "none") is None
    assert resolve_resume(tmp_path, "auto") is None
    save(tmp_path, 10)
    latest = save(tmp_path, 20)
    assert resolve_resume(tmp_path, "none") is None
    assert resolve_resume(tmp_path, "auto") == latest
    explicit = tmp_path / "checkpoints" / "step_00000010"
    assert resolve_resume(tmp_path, str(explicit)) == explicit
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match=str(missing)):
        resolve_resume(tmp_path, str(missing))
    (explicit / "trainer.json").unlink()
    with pytest.raises(CheckpointError, match="step_00000010.*trainer.json"):
        resolve_resume(tmp_path, str(explicit))
    with pytest.raises(CheckpointError, match="empty"):
        resolve_resume(tmp_path, "")


@pytest.mark.parametrize("fail_on", ["model.safetensors", "optimizer.safetensors", "trainer.safetensors"])
def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, fail_on):
    previous = save(tmp_path, 100)
    real_write = store._write_tensors

    def failing_write(path, tensors, *args):
        if path.name == fail_on:
            path.write_bytes(b"partial")  # something half-written is on disk, then it dies
            raise OSError("disk full")
        real_write(path, tensors, *args)

    monkeypatch.setattr(store, "_write_tensors", failing_write)
    for step in (200, 100):  # a new step, and a rewrite of the existing one
        with pytest.raises(OSError, match="disk full"):
            save(tmp_path, step, keep_last=1)
        assert find_latest(tmp_path) == previous
        assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000100"]
    monkeypatch.undo()
    load_checkpoint(previous)  # still intact, hashes and all


def test_unsupported_trainer_value_fails_before_commit(tmp_path):
    with pytest.raises(CheckpointError, match="trainer state.*'cb'"):
        save(tmp_path, 1, trainer={"cb": print})
    assert find_latest(tmp_path) is None
    assert not list((tmp_path / "checkpoints").iterdir())


def test_only_rank_zero_saves(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda group=None: 3)
    with pytest.raises(CheckpointError, match="rank 3"):
        save(tmp_path, 1)
    assert not (tmp_path / "checkpoints").exists()


def test_the_same_state_saved_twice_gives_identical_bytes(tmp_path):
    """Header metadata is written in one order, so the manifest's sha256 shows equal checkpoints
    (safetensors alone writes its metadata map in a different order from save to save)."""
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_steps(model, opt, 2)
    state = dict(model={**model.state_dict(), "0._extra_state": None}, optimizer=opt.state_dict(),
                 trainer=trainer_state(2), config_yaml=CONFIG_YAML, keep_last=0)
    folders = [save_checkpoint(tmp_path / f"run{i}", 2, **state) for i in range(4)]
    manifests = [json.loads((f / "manifest.json").read_text())["files"] for f in folders]
    assert all(m == manifests[0] for m in manifests)
    for name in manifests[0]:
        assert len({(f / name).read_bytes() for f in folders}) == 1, name
    assert_same(load_checkpoint(folders[0]).model, load_checkpoint(folders[3]).model)


def test_a_model_state_with_nested_tensors_names_the_first_three(tmp_path):
    model = {"w": torch.ones(2), **{f"n{i}": {"t": torch.zeros(1)} for i in range(4, 0, -1)}}
    with pytest.raises(CheckpointError, match=r"model state entries \['n1/t', 'n2/t', 'n3/t'\] hold tensors inside containers"):
        save(tmp_path, 1, model=model)
    assert not list((tmp_path / "checkpoints").glob("step_*"))


def test_the_store_signatures_resolve_for_typing_tools():
    """The modules postpone their annotations; a broken one would only fail what reads the hints."""
    import inspect
    import typing
    from pathlib import Path

    functions = [f for module in (store, folders) for _, f in inspect.getmembers(module, inspect.isfunction)
                 if f.__module__ == module.__name__]
    hints = {f.__name__: typing.get_type_hints(f) for f in functions}
    assert len(hints) >= 20 and hints["is_sharded"]["path"] == str | Path
    assert hints["resolve_resume"]["return"] == Path | None
    assert hints["prune_checkpoints"]["protect"] == Path | None
    assert hints["_write_tensors"]["order"] == list[str] | None


def test_save_checkpoint_takes_its_states_by_keyword_only(tmp_path):
    """model, optimizer, trainer ... by name: a positional mix-up cannot swap two states."""
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, 1, {}, {}, {}, CONFIG_YAML, 0)


def test_a_header_that_does_not_match_its_tensors_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    store._write_tensors(path, {"a": torch.ones(1), "b": torch.zeros(1)}, order=["a"])
    with pytest.raises(CheckpointError, match="m.safetensors: header order list does not match the stored entries"):
        store._load_tensors(path)
    store._write_tensors(path, {"a": torch.ones(1)}, order=["a", "x"], extra_json='{"x": {"__tensor__": "gone"}}')
    with pytest.raises(CheckpointError, match=r"m.safetensors: cannot read tensors \(missing tensor 'gone'\)"):
        store._load_tensors(path)


def test_a_trainer_json_that_is_not_utf8_is_named(tmp_path):
    path = save(tmp_path, 1)
    data = (path / "trainer.json").read_bytes()
    (path / "trainer.json").write_bytes(b"\xff" + data[1:])  # the listed size, not UTF-8
    with pytest.raises(CheckpointError, match=r"trainer.json: malformed JSON"):
        load_checkpoint(path, verify=False)


def test_a_model_entry_that_cannot_be_saved_is_named(tmp_path):
    with pytest.raises(CheckpointError, match=r"cannot save model state: .*x\._extra_state"):
        save(tmp_path, 1, model={"w": torch.ones(1), "x._extra_state": object()})
    assert not list((tmp_path / "checkpoints").glob("step_*"))


@pytest.mark.parametrize("keep_last", [-1, 0])
def test_a_keep_last_of_zero_or_less_keeps_everything(tmp_path, keep_last):
    for step in (1, 2, 3):
        save(tmp_path, step)
    folders.prune_checkpoints(tmp_path, keep_last)
    assert [s for s, _ in folders.list_checkpoints(tmp_path)] == [1, 2, 3]


def test_a_scratch_name_already_taken_draws_another(tmp_path, monkeypatch):
    draws = iter(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb"])
    monkeypatch.setattr(store.secrets, "token_hex", lambda n: next(draws))
    (tmp_path / ".tmp-x-aaaaaaaa").mkdir()
    assert store._new_scratch(tmp_path, ".tmp-x-").name == ".tmp-x-bbbbbbbb"


def test_retention_defaults_have_no_milestones(tmp_path):
    """keep_every defaults to 0 everywhere: keep_last alone decides."""
    for step in (1, 2, 3):
        save(tmp_path, step)
    folders.prune_checkpoints(tmp_path, 1)
    assert [s for s, _ in folders.list_checkpoints(tmp_path)] == [3]
    save_checkpoint(tmp_path, 4, model={"w": torch.ones(1)}, optimizer={}, trainer={}, config_yaml="", keep_last=1)
    assert [s for s, _ in folders.list_checkpoints(tmp_path)] == [4]


def test_step_zero_is_a_checkpoint(tmp_path):
    assert save(tmp_path, 0).name == "step_00000000" and folders.find_latest(tmp_path).name == "step_00000000"


def test_a_manifest_without_a_required_file_is_not_a_checkpoint(tmp_path):
    path = save(tmp_path, 2)
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["files"]["config.yaml"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert not folders.is_complete(path)
    with pytest.raises(CheckpointError, match="manifest does not list required file 'config.yaml'"):
        load_checkpoint(path)


@pytest.mark.parametrize("folder_step", [1, 3])
def test_a_folder_named_for_another_step_is_refused(tmp_path, folder_step):
    path = save(tmp_path, 2)
    moved = path.rename(path.with_name(f"step_{folder_step:08d}"))
    with pytest.raises(CheckpointError, match="folder name does not match manifest step 2"):
        load_checkpoint(moved)
    assert folders.list_checkpoints(tmp_path) == []


def test_resume_auto_as_a_config_file_gives_it(tmp_path):
    """An equal string, not the literal object."""
    path = save(tmp_path, 5)
    assert resolve_resume(tmp_path, "".join(["au", "to"])) == path
    assert resolve_resume(tmp_path, "".join(["no", "ne"])) is None


def test_a_negative_step_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint step must be an int >= 0, got -1"):
        save(tmp_path, -1)
    assert not (tmp_path / "checkpoints").exists()


def test_keep_every_one_keeps_every_step(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, keep_last=1, keep_every=1)
    assert [s for s, _ in folders.list_checkpoints(tmp_path)] == [1, 2, 3]


def test_a_header_order_listing_more_than_the_file_holds_is_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    store._write_tensors(path, {"a": torch.ones(1), "b": torch.zeros(1)}, order=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="header order list does not match the stored entries"):
        store._load_tensors(path)


def test_a_trainer_structure_that_cannot_be_rebuilt_is_named(tmp_path):
    path = save(tmp_path, 1, trainer={"pad": "x" * 60})
    size = (path / "trainer.json").stat().st_size
    bad = json.dumps({"s": {"__tensor__": "gone"}})
    (path / "trainer.json").write_text(bad + " " * (size - len(bad)))  # the listed size, valid JSON
    with pytest.raises(CheckpointError, match=r"trainer.json: cannot rebuild the trainer state \(missing tensor 'gone'\)"):
        load_checkpoint(path, verify=False)


def test_load_model_state_verifies_by_default(tmp_path):
    path = save(tmp_path, 1)
    model = path / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        store.load_model_state(path)


def test_resume_takes_a_relative_path(tmp_path, monkeypatch):
    """A relative folder whose name sorts after 'auto' and 'none' is still a path."""
    path = save(tmp_path / "runs", 3)
    monkeypatch.chdir(tmp_path)
    assert resolve_resume(tmp_path, "runs/checkpoints/step_00000003") == store.Path("runs/checkpoints/step_00000003")
    assert path.is_dir()
