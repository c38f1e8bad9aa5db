"""``launch/recipe.sh`` on a real Slurm (``cluster.py``): a two-stage recipe becomes two
launch/pretrain.sh jobs, the second held by ``--dependency=afterok`` on the first, starting from
the first stage's final checkpoint; submitting the finished recipe again submits nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from cluster import wait_for
from test_slurm_launch import JOB_S, LENGTHS, TINY, free_port, text
from wallwm_pretrain.checkpoint import find_latest

REPO = Path(__file__).resolve().parents[2]


def test_recipe_chain_runs_stage_two_after_stage_one(slurm, tmp_path, shard_writer):
    shards = shard_writer(tmp_path / "shards", LENGTHS)
    common = [*TINY, f"data.shards={shards}", "train.steps=2", "tracking.enabled=false"]
    recipe = tmp_path / "chain.yaml"
    recipe.write_text(yaml.safe_dump({"name": "chain", "runs_root": str(tmp_path / "runs"), "stages": [
        {"name": "1_video", "config": "configs/smoke.yaml",
         "overrides": [*common, "model.train_parts=[video_tower,caption_encoder]", "model.action_loss_weight=0"]},
        {"name": "2_action", "config": "configs/smoke.yaml", "init_from": "1_video",
         "overrides": [*common, "model.train_parts=[action_tower,time_head]", "model.video_loss_weight=0"]},
    ]}))
    env = dict(slurm.env, PYTHON=sys.executable, PYTHONPATH=str(REPO), NPROC_PER_NODE="1", OMP_NUM_THREADS="1",
               WALLWM_LOG_ROOT=str(tmp_path / "slurm"), MASTER_PORT=str(free_port()),
               SBATCH_ARGS=f"--nodes=1 --gpus-per-node=0 --cpus-per-task=1 --time=60 --output={tmp_path}/%x-%j.out")

    def submit() -> str:
        out = subprocess.run(["launch/recipe.sh", str(recipe)], cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    said = submit()
    lines = said.splitlines()
    jobs = [line.split()[3] for line in lines]  # "stage NAME: job ID ..."
    slurm.jobs.extend(jobs)
    assert len(jobs) == 2 and f"(after job {jobs[0]})" in lines[1], said
    assert slurm.job(jobs[1]).get("Dependency", "").startswith(f"afterok:{jobs[0]}")
    wait_for(lambda: slurm.job(jobs[1]).get("JobState") in ("COMPLETED", "FAILED", "CANCELLED"), 3 * JOB_S,
             "the chain to end")
    for job, name in zip(jobs, ("1_video", "2_action")):
        info = slurm.job(job)
        assert info["JobState"] == "COMPLETED", (info, text(tmp_path / f"chain-{name}-{job}.out"))
    final1 = find_latest(tmp_path / "runs" / "chain-1_video")
    report = json.loads((tmp_path / "runs" / "chain-2_action" / "init_from.json").read_text())
    assert report["source"] == f"checkpoint {final1} (step 2)"
    assert find_latest(tmp_path / "runs" / "chain-2_action").name == "step_00000002"
    # everything is complete: nothing more to submit
    assert "nothing to submit" in submit()
