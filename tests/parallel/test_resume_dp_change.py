"""Resume with another number of data-parallel ranks (DP2 -> DP1) through the real trainer.

The README promises: checkpoints are saved in the single-process layout, so a run may resume
with a different number of processes; when the data-parallel size changes, data restarts at the
next epoch, with a warning. The expected run is built independently of that code path: the
same checkpoint, rewritten by the checkpoint store alone into a one-rank checkpoint whose loader
position is already "next epoch, first batch", must give bit-identical losses when resumed by
one process (same weights, optimizer state, RNG and flow noise; only the loader branch differs).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from wallwm_pretrain.checkpoint import find_latest, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]
LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13, 15, 9, 17, 12] * 2
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden_size=64",
    "model.image_size=32", "model.patch_size=16", "data.max_frames=16", "data.shuffle_buffer=8",
    "train.log_every=1", "optim.warmup_steps=2", "train.steps=4", "tracking.enabled=false",
    "train.device=cpu",  # gloo on CPU tensors, also on a GPU machine
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_trainer(tmp_path, folder, name, *extra, nproc=1):
    """The one place this file starts the trainer (CLI or key changes are a fix here)."""
    args = [f"data.shards={folder}", f"train.runs_root={tmp_path / 'runs'}", f"train.run_name={name}", *TINY, *extra]
    cmd = [sys.executable, "-m", "wallwm_pretrain.train", *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(nproc),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", *cmd[1:]]
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("RANK", None), env.pop("WORLD_SIZE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def history(run_dir):
    ckpt = load_checkpoint(find_latest(run_dir))
    return ckpt, json.loads(ckpt.trainer["history"])["loss"]


def test_dp2_checkpoint_resumes_on_one_process_at_the_next_epoch(tmp_path, shard_writer):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    runs = tmp_path / "runs"
    # DP2, 2 samples per rank, stops after 2 of 4 steps
    run_trainer(tmp_path, folder, "dp2", "data.batch_size=2", "train.stop_after=2", nproc=2)
    saved, dp2_losses = history(runs / "dp2")
    assert saved.step == 2 and saved.trainer["layout"]["dp"] == 2 and len(saved.trainer["loaders"]) == 2
    epoch = max(int(s["epoch"]) for s in saved.trainer["loaders"])
    shutil.copytree(runs / "dp2", runs / "direct")
    # the expected run: the same state, loader position rewritten to one rank at the next epoch
    crafted = runs / "crafted"
    trainer = dict(saved.trainer, loaders=[{"epoch": epoch + 1, "batches_in_epoch": 0, "bad_samples": 0}])
    save_checkpoint(crafted, saved.step, model=saved.model, optimizer=saved.optimizer, trainer=trainer,
                    config_yaml=saved.config_yaml, keep_last=0)

    # one process, the same global batch of 4
    out = run_trainer(tmp_path, folder, "direct", "data.batch_size=4")
    log = out.stdout + out.stderr
    assert "checkpoint has 2 data-parallel loader positions, this run 1" in log, log[-2000:]
    assert f"beginning of epoch {epoch + 1}" in log
    run_trainer(tmp_path, folder, "crafted", "data.batch_size=4")

    direct, direct_losses = history(runs / "direct")
    expected, expected_losses = history(crafted)
    assert direct.step == 4 and direct.trainer["layout"]["dp"] == 1
    assert [s for s, _ in direct_losses] == [1, 2, 3, 4]
    assert direct_losses[:2] == dp2_losses  # the DP2 part of the curve is carried over as it was
    # same weights, optimizer state, RNG and data after the resume: the same numbers, bit for bit
    assert direct_losses == expected_losses
    assert direct.trainer["loaders"] == expected.trainer["loaders"]
    assert list(expected.model) == list(direct.model)
    for name, value in expected.model.items():  # tensors, and megatron's ``_extra_state`` entries
        other = direct.model[name]
        assert value.equal(other) if hasattr(value, "equal") else value == other, name
