"""``bench/science.py --slurm`` at its smallest setting (1 seed, 1 training and 1 held-out task, a
few steps) on the real Slurm of ``cluster.py``: the data job, the array of one job per mode, the
report job after them, and a report with every arm on both splits. It runs the whole comparison
end to end (every data_tools verb, four trainings, three evaluations, the statistics), so the
command cannot rot; its figures are not a result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from cluster import wait_for

REPO = Path(__file__).resolve().parents[2]
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")


def test_science_smallest_setting_through_slurm(slurm, tmp_path):
    work, docs = tmp_path / "work", tmp_path / "docs"
    env = dict(slurm.env, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MLFLOW_DISABLE_TELEMETRY="true")
    out = subprocess.run([sys.executable, "bench/science.py", "--preset", "test", "--work", str(work), "--docs", str(docs),
                          "--slurm", "--sbatch-args", "--time=30 --cpus-per-task=1"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    data, array, report = re.findall(r"job (\d+)", out.stdout)
    slurm.jobs.extend([data, array, report])
    assert slurm.job(array).get("Dependency", "").startswith(f"afterok:{data}") or slurm.job(array).get("JobState") != "PENDING"
    wait_for(lambda: slurm.job(report).get("JobState") in DONE, 1500, "the science report job")
    logs = "\n".join(p.read_text()[-2000:] for p in sorted((work / "logs").glob("slurm-*.out")))
    assert slurm.job(report)["JobState"] == "COMPLETED", logs

    summary = json.loads((work / "science.json").read_text())
    for split in ("seen", "heldout"):
        arms = summary["analysis"][split]["success"]
        assert set(arms) == {"chunk", "event_script", "event_predicted", "unified"}
        assert all(0.0 <= a["low"] <= a["mean"] <= a["high"] <= 1.0 for a in arms.values())
    assert [(j["kind"], j["seed"]) for j in summary["jobs"]] == [("event", 0), ("chunk", 0), ("unified", 0)]
    # every job ran its own training and evaluation: one results file per (mode, seed), each
    # with the tasks of both splits
    for kind in ("event", "chunk", "unified"):
        res = json.loads((work / "eval" / f"{kind}_seed0" / "results.json").read_text())
        assert set(res["tasks"]) == {"drawer-open-v3", "door-open-v3"} and res["open_loop"]["samples"] > 0
    text = (docs / "science.md").read_text()
    assert "Held-out tasks" in text and "this is a pipeline check, not a result" in text
    assert (docs / "science.png").stat().st_size > 0
