"""Sharded checkpoints across layouts: TP2 x PP2 saves, TP1 and DP4 resume with the same state.

Each rank of the saving run writes its own pieces; each rank of a loading run reads only its
share, box by box. The expected values come from the older, independent gathered path
(``checkpoint.canonical``): the canonical state gathered right after the save must equal, tensor
for tensor, the canonical state gathered after loading under another layout. Distributed Muon
runs in owner mode (momentum on home ranks, fused weights split into Q/K/V and gate/up) with
ZeRO-1 AdamW, the trainer's default.
"""

from __future__ import annotations

import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _launch import _CTX, run_ranks  # noqa: E402

import _sharded_worker as worker  # noqa: E402

from wallwm_pretrain.checkpoint import CheckpointError, find_latest, list_checkpoints, load_checkpoint  # noqa: E402


def launch(tmp: Path, world: int, tp: int, pp: int, **options) -> list[dict]:
    tmp.mkdir(parents=True, exist_ok=True)
    procs = [
        _CTX.Process(target=worker.run_rank, args=(r, world, tp, pp, str(tmp / "rdzv"), str(tmp), options))
        for r in range(world)
    ]
    run_ranks(procs, f"a world of {world} (tp={tp}, pp={pp})")
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(world)]


def assert_equal_state(a, b, path="state"):
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{path}: {a.dtype}{tuple(a.shape)} != {b.dtype}{tuple(b.shape)}"
        assert torch.equal(a, b), f"{path}: values differ by {(a.double() - b.double()).abs().max():.3g}"
    elif isinstance(a, dict):
        assert sorted(a, key=str) == sorted(b, key=str), f"{path}: keys {sorted(set(a) ^ set(b), key=str)[:5]} differ"
        for k in a:
            assert_equal_state(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_state(x, y, f"{path}/{i}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A TP2 x PP2 run after two steps, saved sharded (synchronously and in the background)."""
    tmp = tmp_path_factory.mktemp("tp2pp2")
    records = launch(tmp, world=4, tp=2, pp=2, mode="save")
    return tmp, records[0]["canonical"]


def test_every_rank_writes_its_own_file_and_the_index_tiles_each_tensor(saved):
    tmp, canonical = saved
    folder = find_latest(tmp / "sync")
    files = sorted(p.name for p in folder.glob("rank*.safetensors"))
    assert files == [f"rank{r:05d}.safetensors" for r in range(4)]
    # tensor-parallel slices of one weight are written by both tp ranks of a stage; no rank
    # holds everything
    sizes = [(folder / f).stat().st_size for f in files]
    assert max(sizes) < 0.75 * sum(sizes)
    # read whole (export, tools): the gathered path's state, in the model's order
    whole = load_checkpoint(folder)
    assert list(whole.model) == list(canonical["model"])
    assert_equal_state(whole.model, canonical["model"])
    from wallwm_pretrain.checkpoint.optim.by_name import by_name

    assert_equal_state(by_name(whole.optimizer), canonical["optimizer"])


@pytest.mark.parametrize("world,tp,pp", [(1, 1, 1), (4, 1, 1)], ids=["tp1", "dp4"])
def test_tp2pp2_checkpoint_resumes_at_another_layout_with_identical_state(saved, tmp_path, world, tp, pp):
    tmp, expected = saved
    path = str(find_latest(tmp / "sync"))
    records = launch(tmp_path, world=world, tp=tp, pp=pp, mode="load", path=path)
    assert_equal_state(records[0]["canonical"], expected)
    # each rank reads only its share of the optimizer state: a Muon momentum on its home rank,
    # an AdamW moment element on the one data-parallel rank whose ZeRO shard holds it
    shapes = records[0]["shapes"]
    for name, shape in shapes.items():
        if not name.startswith("optim/") or name.endswith("/step"):
            continue
        read = [r["elements_read"].get(name, 0) for r in records]
        assert sum(read) == torch.Size(shape).numel(), (name, read)


@pytest.mark.parametrize("muon_mode", ["gather", "replicated"])
def test_other_muon_modes_at_tp2_dp2_resume_at_tp1(tmp_path, muon_mode):
    """Gather mode keeps tensor-parallel pieces of Q/K/V on every rank; the replicated set keeps
    whole-rank state laid out like the parameters: both are pieces of the same canonical state."""
    records = launch(tmp_path / "save", world=4, tp=2, pp=1, mode="save", muon_mode=muon_mode, **{"async": False})
    path = str(find_latest(tmp_path / "save" / "sync"))
    loaded = launch(tmp_path / "load", world=1, tp=1, pp=1, mode="load", path=path, muon_mode=muon_mode)
    assert_equal_state(loaded[0]["canonical"], records[0]["canonical"])


def test_async_save_writes_the_same_tensors_as_a_sync_save(saved):
    tmp, _ = saved
    a, b = find_latest(tmp / "sync"), find_latest(tmp / "async")
    for r in range(4):
        name = f"rank{r:05d}.safetensors"
        with safe_open(str(a / name), "pt") as fa, safe_open(str(b / name), "pt") as fb:
            assert sorted(fa.keys()) == sorted(fb.keys())
            for key in fa.keys():
                assert torch.equal(fa.get_tensor(key), fb.get_tensor(key)), (name, key)
    assert (a / "index.json").read_bytes() == (b / "index.json").read_bytes()


def test_a_missing_piece_file_fails_naming_it(saved, tmp_path):
    tmp, _ = saved
    copy = tmp_path / "step_00000002"
    shutil.copytree(find_latest(tmp / "sync"), copy)
    (copy / "rank00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="rank00002.safetensors"):
        load_checkpoint(copy)


def test_a_gathered_checkpoint_of_older_versions_still_loads(saved, tmp_path):
    """The gathered layout (format_version 1) is still written on request and loads as before."""
    from wallwm_pretrain.checkpoint import save_checkpoint

    tmp, _ = saved
    state = load_checkpoint(find_latest(tmp / "sync"))
    path = save_checkpoint(tmp_path, state.step, model=state.model, optimizer=state.optimizer,
                           trainer=state.trainer, config_yaml=state.config_yaml, keep_last=0)
    again = load_checkpoint(path)
    assert_equal_state(again.model, state.model)
    assert_equal_state(again.optimizer, state.optimizer)


@pytest.mark.parametrize(
    "kill_rank,kill_at,background",
    [(1, "piece_file", False), (1, "piece_file", True), (0, "before_manifest", False)],
    ids=["rank1-mid-file", "rank1-mid-file-async", "rank0-before-manifest"],
)
def test_kill_9_during_a_sharded_save_leaves_the_previous_checkpoint_newest(tmp_path, kill_rank, kill_at, background):
    procs = [
        _CTX.Process(
            target=worker.run_rank,
            args=(r, 2, 2, 1, str(tmp_path / "rdzv"), str(tmp_path),
                  dict(mode="kill", kill_rank=kill_rank, kill_at=kill_at, background=background, timeout_s=20)),
        )
        for r in range(2)
    ]
    with pytest.raises(AssertionError):
        run_ranks(procs, "a save with one rank killed")
    assert procs[kill_rank].exitcode == -signal.SIGKILL
    run = tmp_path / "run"
    # the step-2 save left a scratch folder that is never loaded; step 1 stays the newest
    assert [step for step, _ in list_checkpoints(run)] == [1]
    assert list((run / "checkpoints").glob(".tmp-step_00000002-*"))
    assert not (run / "checkpoints" / "step_00000002").exists()
    assert load_checkpoint(find_latest(run)).step == 1


def test_export_of_a_sharded_checkpoint_holds_the_whole_model(saved, tmp_path):
    from safetensors.torch import load_file

    from wallwm_pretrain.export import export

    tmp, canonical = saved
    out = export(find_latest(tmp / "sync"), tmp_path / "model.safetensors")
    weights = load_file(str(out))
    expected = {k: v for k, v in canonical["model"].items() if isinstance(v, torch.Tensor)}
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
