"""The training CLI as a user meets it: --help, and config errors before any work."""

import subprocess
import sys
from pathlib import Path

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")  # from any working directory


def run(*args):
    return subprocess.run([sys.executable, "-m", "wallwm_pretrain.train", *args], capture_output=True, text=True, timeout=300)


def test_help():
    out = run("--help")
    assert out.returncode == 0 and "key=value" in out.stdout and "--config" in out.stdout


def test_mistyped_key_fails_before_work(tmp_path):
    out = run("--config", SMOKE, "train.stpes=3", f"train.runs_root={tmp_path}")
    assert out.returncode == 2
    assert "unknown config key 'train.stpes'; did you mean 'train.steps'?" in out.stderr
    assert not any(tmp_path.iterdir())  # nothing was created


def test_missing_shards_named(tmp_path):
    out = run("--config", SMOKE, f"data.shards={tmp_path / 'nope'}", f"train.runs_root={tmp_path}")
    assert out.returncode != 0 and "index.json not found" in out.stderr
