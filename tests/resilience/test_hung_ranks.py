"""Hung and dead ranks end a 2-rank torchrun job promptly, with a message naming the rank: a
rank killed with SIGKILL mid-run, and a rank frozen with SIGSTOP (a hang: its process is alive
but answers nothing), whose peer's watchdog or collective timeout ends the run."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]
LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13, 15, 9, 17, 12] * 2
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden_size=64",
    "model.image_size=32", "model.patch_size=16", "data.batch_size=2", "data.max_frames=16",
    "data.shuffle_buffer=8", "train.log_every=1", "optim.warmup_steps=2", "train.save_every=0",
    "train.steps=100000", "parallel.heartbeat_s=1", "parallel.timeout_s=15",
    "train.device=cpu",  # gloo on CPU tensors, on GPU nodes too: the proof is about the job, not the device
]
# bound on the whole job after the fault: the 15 s timeout, the watchdog's period, torchrun's
# own shutdown (it gives the surviving rank 60 s to report before it kills it); a hang would run
# into it
AFTER_FAULT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fault(tmp_path, shard_writer, sig) -> str:
    """Start 2 ranks, send ``sig`` to rank 1 once step 2 is logged; the job's output."""
    folder = shard_writer(tmp_path / "shards", LENGTHS)
    run_dir = tmp_path / "runs" / "faulty"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--shutdown-timeout", "60",
           "-m", "wallwm_pretrain.train", f"data.shards={folder}", f"train.runs_root={tmp_path / 'runs'}",
           "train.run_name=faulty", *TINY]
    env = dict(os.environ, OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    victim = None
    try:
        for line in proc.stdout:  # ends when the job does; step lines come every fraction of a second
            seen.append(line)
            if "step      2 |" in line:
                victim = json.loads((run_dir / "heartbeat" / "rank-00001.json").read_text())["pid"]
                os.kill(victim, sig)
                break
        assert victim is not None, "".join(seen)[-3000:]
        rest, _ = proc.communicate(timeout=AFTER_FAULT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if victim is not None and sig == signal.SIGSTOP:
            try:
                os.kill(victim, signal.SIGKILL)  # never leave the frozen rank behind
            except ProcessLookupError:
                pass
    out = "".join(seen) + rest
    assert proc.returncode != 0, out[-3000:]
    return out


def test_killed_rank_ends_the_job_naming_it(tmp_path, shard_writer):
    out = fault(tmp_path, shard_writer, signal.SIGKILL)
    # rank 0's collective fails; its error names the step, the phase and where rank 1 was
    assert re.search(r"error: rank 0: a collective failed at step \d+ in phase \w+ .*rank 1 \(", out), out[-3000:]


def test_frozen_rank_ends_the_job_naming_it(tmp_path, shard_writer):
    out = fault(tmp_path, shard_writer, signal.SIGSTOP)
    # the watchdog ("rank 1 ... stopped answering") or the collective timeout, whichever comes
    # first, ends rank 0 with a message that names rank 1
    assert re.search(r"error: (watchdog: rank 1 \(.*stopped answering|rank 0: a collective failed.*rank 1 \()",
                     out), out[-3000:]
