"""The trainer end to end on real shards: resume equality, checkpoints, MLflow, summary."""

import json

import mlflow
import pytest

from wallwm_pretrain.config import load_config
from wallwm_pretrain.captions import decode_caption

LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13, 15, 9, 17, 12]
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden_size=64",
    "model.text_layers=1", "model.image_size=32", "model.patch_size=16", "data.batch_size=4",
    "data.max_frames=16", "data.shuffle_buffer=8", "train.log_every=2", "optim.warmup_steps=2",
    "train.device=cpu",  # in this process megatron runs patched for CPU, also on a GPU machine
]


def run(tmp_path, folder, name, *extra):
    from wallwm_pretrain.parallel import shutdown_parallel
    from wallwm_pretrain.trainer import Trainer

    cfg = load_config(None, TINY + [f"data.shards={folder}", f"train.runs_root={tmp_path / 'runs'}",
                                    f"train.run_name={name}", *extra])
    trainer = Trainer(cfg)
    try:
        return trainer, trainer.train()
    finally:
        shutdown_parallel()


def losses(trainer):
    return [v for _, v in trainer.history["loss"]]


@pytest.mark.parametrize("balance", [[], ["data.balance.alpha_vl=0.0", "data.balance.alpha_action=0.5"]])
def test_resume_gives_identical_losses(tmp_path, shard_writer, balance):
    """2N steps straight == N steps, stop, resume, N steps (the loader crosses an epoch too),
    with the natural mix and with cluster balancing."""
    clusters = [(i % 3, i % 2) for i in range(len(LENGTHS))]
    folder = shard_writer(tmp_path / "shards", LENGTHS, clusters=clusters)
    straight, _ = run(tmp_path, folder, "straight", "train.steps=6", "train.save_every=0", *balance)
    run(tmp_path, folder, "split", "train.steps=6", "train.stop_after=3", "train.save_every=0", *balance)
    resumed, summary = run(tmp_path, folder, "split", "train.steps=6", "train.resume=auto", *balance)
    assert summary.start_step == 3 and summary.resumed_from.endswith("step_00000003")
    assert losses(resumed) == losses(straight)  # exact: same data, RNG, optimizer state on CPU


def test_resume_none_starts_over_and_differs_from_continuing(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    first, _ = run(tmp_path, folder, "r", "train.steps=3")
    again, summary = run(tmp_path, folder, "r", "train.steps=3", "train.resume=none")
    assert summary.start_step == 0 and losses(again) == losses(first)
    # continuing (resume=auto) from the step-3 checkpoint is another trajectory: steps 4..6
    continued, later = run(tmp_path, folder, "r", "train.steps=6", "train.resume=auto")
    assert later.start_step == 3 and [s for s, _ in continued.history["loss"]] == [1, 2, 3, 4, 5, 6]
    assert losses(continued)[:3] == losses(first) and losses(continued)[3:] != losses(first)


def test_run_folder_checkpoint_and_mlflow(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    trainer, summary = run(tmp_path, folder, "tracked", "train.steps=4", "train.save_every=2",
                           "train.keep_checkpoints=1")
    run_dir = tmp_path / "runs" / "tracked"
    png = (run_dir / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"  # the curve is a PNG (its drawing: tests/test_tracking.py)
    assert load_config(run_dir / "config.yaml").train.steps == 4  # the resolved config, loadable
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["step_00000004"]  # keep_checkpoints=1
    written = json.loads((run_dir / "summary.json").read_text())
    assert written["start_step"] == 0 and written["end_step"] == 4
    assert written["last_loss"] == pytest.approx(sum(losses(trainer)) / 4)  # mean of the (<= 10) last
    assert written["checkpoint"].endswith("step_00000004")

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run_info = client.get_run(summary.mlflow_run_id)
    assert run_info.data.params["model.hidden_size"] == "32"
    history = client.get_metric_history(summary.mlflow_run_id, "loss")
    assert [m.step for m in history] == [2, 4]
    assert history[-1].value == pytest.approx(losses(trainer)[-1])

    # a resumed run continues the same MLflow run
    _, later = run(tmp_path, folder, "tracked", "train.steps=6")
    assert later.mlflow_run_id == summary.mlflow_run_id
    assert [m.step for m in client.get_metric_history(summary.mlflow_run_id, "loss")] == [2, 4, 6]


def test_chunk_mode_trains(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    trainer, summary = run(tmp_path, folder, "chunk", "train.steps=2", "data.mode=chunk", "data.chunk_horizon=8")
    assert summary.end_step == 2 and all(l > 0 for l in losses(trainer))
    # chunk mode trains on windows of at most chunk_horizon steps, each with the task caption
    batch = next(iter(trainer.loader))
    assert int(batch.lengths.max()) <= 8 and batch.actions.shape[1] <= 8
    assert all(decode_caption(c.numpy()).startswith("task ") for c in batch.caption)


def test_microbatches_give_the_same_run(tmp_path, shard_writer):
    """Gradient accumulation over 2 microbatches (megatron's schedule, noise rows of the whole
    batch) follows the single-batch run: same batches, same draws, sums in another order."""
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    whole, _ = run(tmp_path, folder, "whole", "train.steps=4")
    split, _ = run(tmp_path, folder, "split", "train.steps=4", "train.microbatches=2", "model.recompute=full")
    assert losses(split) == pytest.approx(losses(whole), abs=1e-5)


def test_export_gives_a_model_that_loads_on_one_process(tmp_path, shard_writer):
    import subprocess
    import sys

    import torch

    from wallwm_pretrain.export import load_exported

    folder = shard_writer(tmp_path / "shards", LENGTHS)
    run(tmp_path, folder, "exp", "train.steps=2")
    out = tmp_path / "model.safetensors"
    done = subprocess.run([sys.executable, "-m", "wallwm_pretrain.export", "--ckpt", str(tmp_path / "runs" / "exp"),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "model.safetensors.yaml").is_file()
    exported_cfg = load_config(tmp_path / "model.safetensors.yaml")  # the run's config, beside the weights
    assert exported_cfg.model.hidden_size == 32 and exported_cfg.train.steps == 2
    model, cfg = load_exported(out)  # local layers: no process group needed
    from wallwm_pretrain.checkpoint import find_latest, load_checkpoint

    saved = load_checkpoint(find_latest(tmp_path / "runs" / "exp")).model
    for name, tensor in model.state_dict().items():
        if isinstance(saved.get(name), torch.Tensor):
            assert torch.equal(tensor, saved[name]), name
    assert cfg.model.hidden_size == 32 and cfg.train.steps == 2
    bad = subprocess.run([sys.executable, "-m", "wallwm_pretrain.export", "--ckpt", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "x.safetensors")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and str(tmp_path / "nope") in bad.stderr
