"""Non-finite steps: a NaN in one rank's batch skips the update on every rank, the run goes on
exactly as if the loader had skipped that batch, the skip is counted (MLflow, checkpoint), too
many skips stop the run, and a non-finite state is never saved."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import mlflow
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "parallel"))  # the rank-process harness
sys.path.insert(0, str(HERE))
from _launch import _CTX, run_ranks  # noqa: E402

import _fault_worker  # noqa: E402

LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13, 15, 9, 17, 12] * 2
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden_size=64",
    "model.image_size=32", "model.patch_size=16", "data.batch_size=2", "data.max_frames=16",
    "data.shuffle_buffer=8", "train.log_every=1", "optim.warmup_steps=2", "train.steps=4", "train.save_every=0",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_ranks(tmp_path: Path, name: str, folder: Path, *extra: str, inject=None, drop=None) -> list[dict]:
    out = tmp_path / name
    out.mkdir()
    overrides = [f"data.shards={folder}", f"train.runs_root={tmp_path / 'runs'}", f"train.run_name={name}", *TINY,
                 *extra]
    port = free_port()
    procs = [_CTX.Process(target=_fault_worker.run_rank, args=(r, 2, port, str(out), overrides, inject, drop))
             for r in range(2)]
    run_ranks(procs, f"2 ranks of {name}")
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def test_nan_on_one_rank_is_skipped_everywhere(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    faulty = two_ranks(tmp_path, "nan", folder, inject=(1, 2))
    clean = two_ranks(tmp_path, "dropped", folder, drop=2)
    for rank in range(2):
        # the update of step 2 was skipped on both ranks, the step was repeated with the next batch
        assert faulty[rank]["skips"]["steps"] == [2] and faulty[rank]["skips"]["total"] == 1
        assert faulty[rank]["summary"].end_step == 4 and faulty[rank]["fetched"] == 5
        # exact: the skipped step touched neither weights, optimizer state, schedule nor noise
        assert faulty[rank]["losses"] == clean[rank]["losses"] and len(clean[rank]["losses"]) == 4
        for name, w in clean[rank]["weights"].items():
            assert torch.equal(faulty[rank]["weights"][name], w), name
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    history = client.get_metric_history(faulty[0]["summary"].mlflow_run_id, "skipped_steps")
    assert [(m.step, m.value) for m in history] == [(2, 1.0)]


def run_single(tmp_path, folder, name, *extra, inject=None):
    from wallwm_pretrain.config import load_config
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    class Poisoned(Trainer):
        fetched = 0

        def next_batch(self):
            batch = super().next_batch()
            if self.fetched in (inject or ()):
                batch.actions[0, 0, 0] = float("inf")
            self.fetched += 1
            return batch

    cfg = load_config(None, [f"data.shards={folder}", f"train.runs_root={tmp_path / 'runs'}",
                             f"train.run_name={name}", *TINY, *extra])
    trainer = Poisoned(cfg)
    try:
        return trainer, trainer.train()
    finally:
        shutdown_parallel()


def test_too_many_skips_stop_the_run(tmp_path, shard_writer):
    from wallwm_pretrain.resilience.nonfinite import NonFiniteError

    folder = shard_writer(tmp_path / "shards", LENGTHS)
    with pytest.raises(NonFiniteError, match=r"step 1: .*2 in a row > train.max_consecutive_skipped=1"):
        run_single(tmp_path, folder, "row", "train.max_consecutive_skipped=1", inject=(1, 2))
    with pytest.raises(NonFiniteError, match=r"2 in total > train.max_skipped_steps=1"):
        run_single(tmp_path, folder, "total", "train.max_skipped_steps=1", "train.max_consecutive_skipped=5",
                   inject=(0, 2))
    # one skip within the limits: the run ends normally and the checkpoint keeps the count
    from wallwm_pretrain.checkpoint import find_latest, load_checkpoint

    _, summary = run_single(tmp_path, folder, "within", "train.max_skipped_steps=1", inject=(1,))
    assert summary.end_step == 4 and summary.skipped_steps == 1
    import json

    saved = json.loads(load_checkpoint(find_latest(tmp_path / "runs" / "within")).trainer["skipped"])
    assert saved == {"total": 1, "consecutive": 0, "steps": [1]}


def test_non_finite_weights_are_never_saved(tmp_path, shard_writer):
    from wallwm_pretrain.checkpoint import list_checkpoints
    from wallwm_pretrain.parallel.parallelize import unwrap_model
    from wallwm_pretrain.resilience.nonfinite import NonFiniteError

    folder = shard_writer(tmp_path / "shards", LENGTHS)
    trainer, _ = run_single(tmp_path, folder, "w", "train.steps=2")
    before = list_checkpoints(tmp_path / "runs" / "w")
    from wallwm_pretrain.parallel import init_parallel

    init_parallel(1, 1, "cpu", 0)  # the run tore its groups down; save() needs them
    try:
        param = next(unwrap_model(trainer.model[0]).parameters())
        with torch.no_grad():
            param.view(-1)[0] = float("nan")
        trainer.step = 3
        with pytest.raises(NonFiniteError, match=r"not saving step 3 .*non-finite weights \(rank 0"):
            trainer.save()
    finally:
        from wallwm_pretrain.parallel import shutdown_parallel

        shutdown_parallel()
    assert list_checkpoints(tmp_path / "runs" / "w") == before
