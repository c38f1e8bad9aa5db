"""validate: every problem listed with its episode and event, exit codes, --json, --decode."""

from __future__ import annotations

import json
import shutil

import pytest

from data_tools.validate import validate


@pytest.fixture
def broken(dt_tiny, dt_events, tmp_path):
    """A copy of the tiny dataset whose events.jsonl holds one planted problem of each kind."""
    root = shutil.copytree(dt_tiny, tmp_path / "broken")
    events = dt_events(root)
    find = lambda ep, lv, i: next(e for e in events if (e["episode_index"], e["level"], e["index"]) == (ep, lv, i))
    find(0, "L1", 1)["start"] -= 1                  # overlaps L1 event 0
    l2 = find(1, "L2", 0)
    find(1, "L1", 0)["end"] = l2["end"] + 1          # spills out of its parent (and overlaps L1 1)
    find(2, "L1", 2)["end"] = find(2, "L1", 2)["start"] + 1   # one frame: too short (warning)
    last = max((e for e in events if e["episode_index"] == 3 and e["level"] == "L3"), key=lambda e: e["index"])
    last["end"] += 7                                 # outside the episode
    events.append({"episode_index": 99, "level": "L1", "index": 0, "start": 0, "end": 5,
                   "caption": "ghost", "parent": None})   # no such episode
    events.append({"episode_index": 4, "level": "L0", "index": 0, "start": 0, "end": 500,
                   "caption": "wide", "parent": 0})       # L0 wider than its L1 parent
    lines = [json.dumps(e) for e in events] + ['{"episode_index": 4, "level": "L1"}', "not json"]
    (root / "events.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_clean_dataset_passes(dt_tiny, dt_cli):
    report = validate(dt_tiny)
    assert report["errors"] == report["warnings"] == 0 and report["problems"] == []
    proc = dt_cli("validate", "--src", dt_tiny)
    assert proc.returncode == 0 and "0 error(s), 0 warning(s)" in proc.stdout


def test_every_planted_problem_is_reported(broken):
    report = validate(broken)
    by_code = {}
    for p in report["problems"]:
        by_code.setdefault(p["code"], []).append(p)
    where = lambda code: {(p["episode"], p["level"], p["index"]) for p in by_code[code]}
    assert (0, "L1", 1) in where("overlap")
    assert (1, "L1", 0) in where("outside-parent")
    assert (4, "L0", 0) in where("outside-parent")
    assert (3, "L3", 0) in where("outside-episode")
    assert (4, "L0", 0) in where("outside-episode")
    assert (99, "L1", 0) in where("unknown-episode")
    assert where("too-short") == {(2, "L1", 2)}
    assert all(p["severity"] == "warning" for p in by_code["too-short"])
    assert len(by_code["bad-line"]) == 2
    assert any("events.jsonl:" in p["message"] and "missing field" in p["message"] for p in by_code["bad-line"])
    msg = next(p["message"] for p in by_code["overlap"] if p["episode"] == 0)
    assert "episode 0, L1 event 1" in msg and "overlaps L1 event 0" in msg
    assert report["errors"] == sum(p["severity"] == "error" for p in report["problems"]) >= 8


def test_cli_exit_codes_text_and_json(broken, dt_cli, dt_tiny, dt_events, tmp_path):
    proc = dt_cli("validate", "--src", broken)
    assert proc.returncode == 1
    assert "ERROR   [overlap] episode 0, L1 event 1" in proc.stdout
    assert "WARNING [too-short] episode 2, L1 event 2" in proc.stdout
    proc = dt_cli("validate", "--src", broken, "--json")
    report = json.loads(proc.stdout)
    assert proc.returncode == 1 and report["errors"] > 0 and report["layout"] == "v3.0"
    # Warnings alone pass, unless --strict; --min-length sets the threshold.
    short = shutil.copytree(dt_tiny, tmp_path / "short")
    assert dt_cli("validate", "--src", short, "--min-length", "4").returncode == 0
    assert dt_cli("validate", "--src", short, "--min-length", "4", "--strict").returncode == 1


def test_decode_reports_unreadable_video_and_keeps_going(dt_tiny, tmp_path):
    root = shutil.copytree(dt_tiny, tmp_path / "badvideo")
    video = root / "videos/observation.images.wrist/chunk-000/file-000.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])  # truncated: no index
    assert validate(root)["errors"] == 0  # events alone are fine
    report = validate(root, decode=True)
    bad = [p for p in report["problems"] if p["code"] == "unreadable"]
    assert {p["episode"] for p in bad} == {0, 1, 2, 3, 4}  # every episode, not just the first
    assert all("observation.images.wrist" in p["message"] and str(video) in p["message"] for p in bad)
