"""A lost rank on the real two-node Slurm (``cluster.py``): ``kill -9`` of rank 1's worker in the
middle of a ``sbatch launch/pretrain.sh`` run. Rank 0 detects it, torchrun starts both nodes'
workers again (``--max-restarts``), they resume from the newest checkpoint and the run finishes
with the same loss at every step as an uninterrupted run; the node log and MLflow say why."""

from __future__ import annotations

import json
import os
import signal

import mlflow

from cluster import wait_for
from test_slurm_launch import JOB_S, LENGTHS, history, submit, text

ENDED = ("COMPLETED", "FAILED", "CANCELLED")


def rank0_log(logs) -> str:
    """The node log holding rank 0's step lines (torchrun's rendezvous, not the node id, decides
    which node's worker is rank 0)."""
    for path in sorted(logs.glob("node-*.log")):
        said = text(path)
        if "step      1 |" in said:
            return said
    return ""


def test_a_killed_rank_is_restarted_from_the_last_checkpoint(slurm, tmp_path, shard_writer):
    shard_writer(tmp_path / "shards", LENGTHS)
    steps = 24
    run = [f"train.steps={steps}", "parallel.tp=2", "train.save_every=8"]
    straight, _, straight_out = submit(slurm, tmp_path, "straight", *run, nodes=2)
    job, logs, out = submit(slurm, tmp_path, "killed", *run, nodes=2)
    wait_for(lambda: "step     11 |" in rank0_log(logs), JOB_S, "step 11 in rank 0's log")  # after the step-8 save
    beat = json.loads((tmp_path / "runs" / "killed" / "heartbeat" / "rank-00001.json").read_text())
    os.kill(beat["pid"], signal.SIGKILL)  # rank 1's worker, on node n2, without a signal it could handle
    for j in (straight, job):
        wait_for(lambda: slurm.job(j).get("JobState") in ENDED, 2 * JOB_S, f"job {j} to end")
    assert slurm.job(straight)["JobState"] == "COMPLETED", text(straight_out)
    info = slurm.job(job)
    said = text(out)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "0", (info, said)  # restarted, not requeued
    assert "up to 3 restart(s) after a lost rank" in said and "trainer says: finished step=24" in said
    nodes = "".join(text(p) for p in sorted(logs.glob("node-*.log")))  # rank 0 may change nodes on restart
    assert "error: rank 0: a collective failed at step" in nodes  # detected, not hung
    restarted = [line for line in nodes.splitlines() if "restart 1 of 3 (torchrun --max-restarts) after: " in line]
    assert restarted and "failed step=-1 reason=peer_failure; resumed from" in restarted[0], nodes[-3000:]
    resumed_at = int(restarted[0].rsplit("at step ", 1)[1].split()[0])
    assert resumed_at in (8, 16)
    # the same loss at every step as the run nobody killed
    assert history(tmp_path, "killed") == history(tmp_path, "straight")
    run_id = json.loads((tmp_path / "runs" / "killed" / "summary.json").read_text())["mlflow_run_id"]
    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    params = client.get_run(run_id).data.params
    assert params["restart.1.after"] == "failed step=-1 reason=peer_failure"
    assert params["restart.1.resumed_from"].endswith(f"step_{resumed_at:08d}")
    assert [m.value for m in client.get_metric_history(run_id, "restarts")] == [1.0]
