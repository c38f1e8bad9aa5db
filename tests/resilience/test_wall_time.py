"""Wall-time awareness: with a budget (``train.max_wall_time``) or a job end time
(``$WALLWM_JOB_END_TIME``) that cannot be met, the trainer saves what it has and exits with 75,
writing a ``requeue`` exit record; the next invocation resumes from there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wallwm_pretrain.checkpoint import find_latest, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13, 15, 9, 17, 12]
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden_size=64",
    "model.image_size=32", "model.patch_size=16", "data.batch_size=2", "data.max_frames=16",
    "data.shuffle_buffer=8", "train.log_every=1", "optim.warmup_steps=2", "train.save_every=0",
]


def train(tmp_path, folder, *extra, env=None):
    args = [f"data.shards={folder}", f"train.runs_root={tmp_path / 'runs'}", "train.run_name=timed", *TINY, *extra]
    return subprocess.run([sys.executable, "-m", "wallwm_pretrain.train", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1", **(env or {})))


@pytest.mark.parametrize("limit", ["budget", "job end"])
def test_deadline_saves_and_exits_75(tmp_path, shard_writer, limit):
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    record = tmp_path / "exit-status"
    env = {"WALLWM_EXIT_FILE": str(record)}
    if limit == "budget":  # one second, all of it kept back: the deadline is reached at once
        out = train(tmp_path, folder, "train.steps=100000", "train.max_wall_time=1", "train.exit_margin_s=1",
                    env=env)
    else:  # the job ends now
        out = train(tmp_path, folder, "train.steps=100000", env=dict(env, WALLWM_JOB_END_TIME=str(int(time.time()))))
    assert out.returncode == 75, out.stderr[-3000:]
    status, step, reason = record.read_text().split()
    assert status == "requeue" and reason == "reason=wall_time"
    step = int(step.removeprefix("step="))
    assert step < 100000 and "stop requested (wall time)" in out.stderr
    latest = find_latest(tmp_path / "runs" / "timed")
    assert (latest is None) == (step == 0)  # saved unless no step fitted
    if latest is not None:
        assert load_checkpoint(latest).step == step
    # the next invocation, with time to spare, continues from there to its end
    done = train(tmp_path, folder, f"train.steps={step + 2}", env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert record.read_text().split()[:2] == ["finished", f"step={step + 2}"]
