"""``sbatch launch/pretrain.sh`` on a real two-node Slurm (``cluster.py``): the warning signal
leads to a save, a requeue and an exact resume; scancel saves and ends the job; a finished job
is not requeued; two nodes train together through srun and torchrun's rendezvous."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow

from cluster import wait_for
from wallwm_pretrain.checkpoint import find_latest, list_checkpoints, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
LENGTHS = [5, 9, 12, 16, 7, 20, 11, 8, 14, 6, 10, 13, 15, 9, 17, 12] * 2
TINY = [
    "model.hidden_size=32", "model.num_layers=2", "model.num_heads=2", "model.ffn_hidden_size=64",
    "model.image_size=32", "model.patch_size=16", "data.batch_size=2", "data.max_frames=16",
    "data.shuffle_buffer=8", "train.log_every=1", "optim.warmup_steps=2", "train.save_every=0",
    "train.device=cpu",  # gloo on CPU tensors, on GPU nodes too: what these tests prove is the job cycle
]
JOB_S = 900  # bound on any one job of these tests (start, a few dozen tiny steps, save); generous: a loaded 2-core CI machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def submit(slurm, tmp_path, name, *args, nodes=1, nproc=1):
    """sbatch the launcher as a user would, with a long limit (the warning comes from the test)."""
    env = {"PYTHON": sys.executable, "PYTHONPATH": str(REPO), "NPROC_PER_NODE": str(nproc),
           "WALLWM_LOG_ROOT": str(tmp_path / "slurm"), "MASTER_PORT": str(free_port()), "OMP_NUM_THREADS": "1",
           "SHUTDOWN_TIMEOUT": "120"}
    job = slurm.sbatch(
        f"--job-name={name}", f"--nodes={nodes}", "--gpus-per-node=0", "--cpus-per-task=1", "--time=60",
        f"--output={tmp_path}/%x-%j.out", "--export=ALL", "launch/pretrain.sh", "configs/smoke.yaml",
        f"data.shards={tmp_path / 'shards'}", f"train.runs_root={tmp_path / 'runs'}", f"train.run_name={name}",
        *TINY, *args, env=env, cwd=REPO,
    )
    return job, tmp_path / "slurm" / f"{name}-{job}", tmp_path / f"{name}-{job}.out"


def text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def logged_step(log_dir: Path, step: int) -> bool:
    return f"step {step:6d} |" in text(log_dir / "node-0.log")


def history(tmp_path, name) -> list[tuple[int, float]]:
    state = load_checkpoint(find_latest(tmp_path / "runs" / name))
    return [tuple(p) for p in json.loads(state.trainer["history"])["loss"]]


def reference(tmp_path, name, steps) -> list[tuple[int, float]]:
    """The same run straight through, one process, no Slurm."""
    args = [f"data.shards={tmp_path / 'shards'}", f"train.runs_root={tmp_path / 'runs'}", f"train.run_name={name}",
            *TINY, f"train.steps={steps}"]
    out = subprocess.run([sys.executable, "-m", "wallwm_pretrain.train", "--config", "configs/smoke.yaml", *args],
                         cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                         timeout=JOB_S)
    assert out.returncode == 0, out.stderr[-3000:]
    return history(tmp_path, name)


def test_usr1_saves_requeues_and_resumes_exactly(slurm, tmp_path, shard_writer):
    """(a) the warning signal -> save -> requeue -> resume, per-step losses equal to an
    uninterrupted run; (c) the job that then finishes is not requeued again."""
    shard_writer(tmp_path / "shards", LENGTHS)
    steps = 30
    job, logs, out = submit(slurm, tmp_path, "warned", f"train.steps={steps}")
    wait_for(lambda: logged_step(logs, 3), JOB_S, "step 3 in the node log")
    slurm.run("scancel", "--signal=USR1", "--batch", job)
    wait_for(lambda: slurm.job(job).get("JobState") == "COMPLETED", 2 * JOB_S, f"job {job} to complete")
    info = slurm.job(job)
    assert info["Restarts"] == "1", info  # requeued once, and not again after finishing
    said = text(out)
    assert "received SIGUSR1" in said and "trainer says: requeue step=" in said and "requeueing" in said
    assert "run 1 (requeues so far)" in said and "trainer says: finished step=30" in said
    stopped_at = int(said.split("trainer says: requeue step=")[1].split()[0])
    assert 3 <= stopped_at < steps
    node_log = text(logs / "node-0.log")
    assert "stop requested (SIGUSR1)" in node_log and f"resumed from" in node_log
    assert [p.name for _, p in list_checkpoints(tmp_path / "runs" / "warned")][-1] == "step_00000030"
    assert history(tmp_path, "warned") == reference(tmp_path, "straight", steps)  # exact, step by step
    # one MLflow run across the requeue, every step logged once
    run_id = json.loads((tmp_path / "runs" / "warned" / "summary.json").read_text())["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(run_id, "loss")] == list(range(1, steps + 1))


def test_scancel_saves_and_ends_the_job(slurm, tmp_path, shard_writer):
    """(b) scancel (SIGTERM to the job's processes) saves at the next step boundary; the job is
    not requeued."""
    shard_writer(tmp_path / "shards", LENGTHS)
    job, logs, out = submit(slurm, tmp_path, "cancelled", "train.steps=5000")
    wait_for(lambda: logged_step(logs, 2), JOB_S, "step 2 in the node log")
    slurm.run("scancel", job)
    record = wait_for(lambda: text(logs / "exit-status"), JOB_S, "the exit record")
    assert record.startswith("requeue step=") and "reason=SIGTERM" in record, record
    wait_for(lambda: not slurm.run("squeue", "-h", "-j", job, check=False), JOB_S, f"job {job} to end")
    step = int(record.split("step=")[1].split()[0])
    assert 2 <= step < 5000
    assert load_checkpoint(find_latest(tmp_path / "runs" / "cancelled")).step == step
    info = slurm.job(job)
    assert info["JobState"] == "CANCELLED" and info["Restarts"] == "0", info
    assert "requeueing" not in text(out)


def test_two_nodes_tp2_finish_and_are_not_requeued(slurm, tmp_path, shard_writer):
    """(d) two nodes x one process, TP2, through srun and torchrun's c10d rendezvous; (c) the
    finished job completes without a requeue."""
    shard_writer(tmp_path / "shards", LENGTHS)
    job, logs, out = submit(slurm, tmp_path, "twonodes", "train.steps=3", "parallel.tp=2", nodes=2)
    wait_for(lambda: slurm.job(job).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 2 * JOB_S,
             f"job {job} to end")
    info = slurm.job(job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", (info, text(out))
    assert info["NodeList"] == "n[1-2]"
    assert sorted(p.name for p in logs.glob("node-*.log")) == ["node-0.log", "node-1.log"]
    said = text(out)
    assert "2 nodes x 1 processes" in said and "trainer says: finished step=3" in said
    assert "requeueing" not in said
    state = load_checkpoint(find_latest(tmp_path / "runs" / "twonodes"))
    assert state.step == 3 and state.trainer["layout"] == {"tp": 2, "pp": 1, "dp": 1, "vpp": 1, "cp": 1, "microbatches": 1}
