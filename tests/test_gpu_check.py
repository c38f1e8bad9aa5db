"""The GPU check's dry run: ``bench/gpu_check.sh --dry-run`` runs every part of the GPU check at
tiny sizes on the CPU, in this environment (no wheelhouse, no network), so the script cannot rot
between the rare runs on a lent GPU. Asserts on its JSON file: every part present, finished within
its budget, its figures finite."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ["data", "smoke-test", "smoke-wan", "attention", "mfu-adamw", "mfu-muon", "inference-eager"]


def numbers(value):
    """Every number inside a record's value (dicts and lists walked)."""
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from numbers(v)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    env = dict(os.environ, PYTHON=sys.executable, MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1")
    for var in ("OUT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):  # not the outer make test's settings
        env.pop(var, None)
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--dry-run", "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = json.loads((out / "gpu_check.json").read_text())["records"]
    return out, records, done.stdout


def by_part(records, name):
    return [r for r in records if r["part"] == name]


def test_every_part_ran_within_its_budget(dry_run):
    out, records, stdout = dry_run
    for name in PARTS:
        runs = [r for r in by_part(records, name) if r.get("stage") == "run"]
        assert len(runs) == 1, f"{name}: {runs}"
        assert runs[0]["status"] == "ok", f"{name}: {runs[0]} (log: {out / 'logs' / (name + '.log')})"
        assert 0 < runs[0]["seconds"] <= runs[0]["budget_s"]
    assert by_part(records, "install")[0]["status"] == "skipped"  # the dry run uses this environment
    assert by_part(records, "env")[0]["mode"] == "dry"
    assert "| mfu-muon | ok |" in (out / "gpu_check.md").read_text()
    assert "| smoke-test | ok |" in stdout


def test_figures_are_finite(dry_run):
    _, records, _ = dry_run
    for r in records:
        for x in numbers(r):
            assert math.isfinite(x), r


def test_smoke_runs_resume_exactly_on_cpu(dry_run):
    _, records, _ = dry_run
    (smoke,) = by_part(records, "smoke-test-result")
    assert smoke["status"] == "ok" and smoke["losses_finite"]
    assert smoke["resume_bit_exact"] and smoke["resume_compared_steps"] == 2
    assert smoke["samples_per_s_resumed"] > 0 and smoke["peak_memory_gib_logged"] > 0
    assert smoke["planner_memory_gib"] > 0
    (wan,) = by_part(records, "smoke-wan-result")
    assert wan["status"] == "ok" and wan["steps"] == 4


def test_mfu_parts_measure_both_optimizers_against_the_planner(dry_run):
    _, records, _ = dry_run
    for opt in ("adamw", "muon"):
        (r,) = [x for x in by_part(records, f"mfu-{opt}") if x.get("stage") != "run"]
        assert r["optimizer"] == opt and r["device"] == "cpu" and r["steps_timed"] == 2
        assert r["step_s_median"] > 0 and 0 < r["optimizer_share"] < 1 and r["tokens_per_s"] > 0
        assert r["planner_train_flops_per_sample"] > 0 and r["planner_memory_gib"] > 0
        assert r["mfu"] is None  # no peak on a CPU
        assert r["losses_finite"]
        assert r["sdpa_kernels_in_step"].get("flash_attention_for_cpu", 0) > 0
    adamw, muon = (next(x for x in by_part(records, f"mfu-{o}") if x.get("stage") != "run") for o in ("adamw", "muon"))
    (summary,) = by_part(records, "summary")
    assert summary["status"] == "ok"
    assert summary["muon_step_over_adamw"] == muon["step_s_median"] / adamw["step_s_median"]
    # AdamW keeps two moments of every parameter, Muon one momentum of its matrices
    assert adamw["planner_memory_parts_gib"]["adamw"] > muon["planner_memory_parts_gib"]["adamw"]
    assert muon["planner_memory_parts_gib"]["muon"] > 0 == adamw["planner_memory_parts_gib"]["muon"]


def test_attention_names_the_kernel_at_every_call_site(dry_run):
    _, records, _ = dry_run
    sites = [r for r in by_part(records, "attention") if r.get("stage") != "run"]
    assert {(r["site"], r["masked"]) for r in sites} == {
        (s, m) for s in ("video self", "video-text cross", "action self", "action-video coupling") for m in (True, False)}
    for r in sites:
        assert r["kernels_chosen"], r
    forced = [r["fwd_bwd_ms_forced"] for r in sites if "fwd_bwd_ms_forced" in r]
    assert len(forced) == 2 and all(set(f) == {"flash", "memory-efficient", "cudnn", "math"} for f in forced)


def test_inference_times_every_denoise_step_count(dry_run):
    _, records, _ = dry_run
    (r,) = [x for x in by_part(records, "inference-eager") if x.get("stage") != "run"]
    assert set(r["latency_ms"]) == {"1", "2", "4", "10"} and r["finite"]
    assert r["history_frames"] == 2 and r["control_steps"] == 4
