"""The training CLI as a user meets it: --help, and config errors before any work."""

import subprocess
import sys
from pathlib import Path

SMOKE = str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")  # from any working directory

import pytest


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


@pytest.mark.parametrize("text, message", [
    ("train:\n  steps: 3\n  steps: 4\n", "{path}, line 3: duplicate key 'steps' (first given on line 2)"),
    ("train:\n  steps: 3\ntrain:\n  seed: 1\n", "{path}, line 3: duplicate key 'train' (first given on line 1)"),
    ("train: {steps: 3\n", "{path}, line 2: YAML syntax error: "),
    ("- data\n- model\n", "{path}: the top level must be a mapping of sections (data:, model:, ...), got a list"),
    ("train:\n  run_name: caf\xe9\n", "{path}, line 2: not UTF-8 text (byte 0xe9)"),
])
def test_config_file_errors_are_one_line_with_exit_code_2(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text.encode("latin-1"))
    runs = tmp_path / "runs"
    out = run("--config", str(path), f"train.runs_root={runs}")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: " + message.format(path=path))
    assert not runs.exists()


def test_an_unreadable_config_file_is_one_line(tmp_path):
    out = run("--config", str(tmp_path), f"train.runs_root={tmp_path / 'runs'}")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: {tmp_path}: cannot read the config file (Is a directory)"]


def test_missing_data_creates_no_run_folder(tmp_path):
    runs = tmp_path / "runs"
    out = run("--config", "configs/smoke.yaml", f"data.shards={tmp_path / 'nope'}", f"train.runs_root={runs}")
    assert out.returncode == 2 and "index.json not found" in out.stderr
    assert not runs.exists()
