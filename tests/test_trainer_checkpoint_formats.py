"""The trainer's checkpoint settings end to end: asynchronous saves write what synchronous saves
write, every saved step resumes exactly, and gathered checkpoints (the earlier format) resume."""

from pathlib import Path

from safetensors import safe_open

from test_trainer import LENGTHS, losses, run

import torch


def _tensors(folder: Path) -> dict:
    out = {}
    for file in sorted(folder.glob("rank*.safetensors")):
        with safe_open(str(file), "pt") as f:
            out.update({(file.name, k): f.get_tensor(k) for k in f.keys()})
    return out


def test_async_saves_write_the_sync_tensors_and_resume_exactly(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    common = ["train.steps=6", "train.save_every=2", "train.keep_checkpoints=0"]
    sync, _ = run(tmp_path, folder, "sync", *common)
    background, summary = run(tmp_path, folder, "async", *common, "train.async_save=true")
    assert losses(background) == losses(sync)
    ckpts = tmp_path / "runs"
    for step in (2, 4, 6):
        name = f"checkpoints/step_{step:08d}"
        a, b = _tensors(ckpts / "sync" / name), _tensors(ckpts / "async" / name)
        assert a.keys() == b.keys() and a
        assert all(torch.equal(a[k], b[k]) for k in a), step
        assert (ckpts / "sync" / name / "index.json").read_bytes() == (ckpts / "async" / name / "index.json").read_bytes()
    assert summary.checkpoint.endswith("step_00000006")
    # stop at step 4: the final save waits for the background save of step 2, then writes step 4
    run(tmp_path, folder, "split", *common, "train.async_save=true", "train.stop_after=4")
    resumed, summary = run(tmp_path, folder, "split", *common, "train.async_save=true")
    assert summary.start_step == 4
    assert losses(resumed) == losses(sync)


def test_a_gathered_checkpoint_resumes_into_a_sharded_run(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    straight, _ = run(tmp_path, folder, "straight", "train.steps=4", "train.save_every=0")
    run(tmp_path, folder, "split", "train.steps=4", "train.stop_after=2", "train.save_format=gathered")
    assert (tmp_path / "runs/split/checkpoints/step_00000002/model.safetensors").is_file()
    resumed, summary = run(tmp_path, folder, "split", "train.steps=4")
    assert summary.start_step == 2
    assert losses(resumed) == losses(straight)
    assert (tmp_path / "runs/split/checkpoints/step_00000004/index.json").is_file()


def test_a_signal_during_background_saves_flushes_them_then_saves_the_stop_step(tmp_path, shard_writer):
    """SIGUSR1 while background saves run every step: the stop waits for the write in flight,
    saves its own step synchronously, and leaves no save in flight and no scratch folder."""
    import os
    import signal
    import threading
    import time

    from wallwm_pretrain.checkpoint import find_latest, list_checkpoints, load_checkpoint

    folder = shard_writer(tmp_path / "shards", LENGTHS)
    checkpoints = tmp_path / "runs" / "signalled" / "checkpoints"

    def signal_after_first_save():
        while not (checkpoints / "step_00000002").is_dir():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGUSR1)

    threading.Thread(target=signal_after_first_save, daemon=True).start()
    trainer, summary = run(tmp_path, folder, "signalled", "train.steps=200", "train.save_every=1",
                           "train.async_save=true", "train.keep_checkpoints=0")
    assert summary.stopped == "SIGUSR1" and summary.end_step < 200
    assert not trainer.background.in_flight
    latest = find_latest(tmp_path / "runs" / "signalled")
    assert load_checkpoint(latest).step == summary.end_step
    steps = [s for s, _ in list_checkpoints(tmp_path / "runs" / "signalled")]
    assert steps == list(range(1, summary.end_step + 1))  # every background save committed too
    assert not list(checkpoints.glob(".tmp-*"))
